"""The in-memory due index of single-process stores: which watch to poll next, and who holds a claim.

A heap of `(due, job_id)` with lazy invalidation: `_due` maps each indexed job id to its one current due
time, and heap entries that disagree with it are stale and skipped when they surface. A claim moves the
watch's due time to its lease expiry (as the shared PostgreSQL store does with `next_poll_at`, SPEC §11),
so a claim that is never saved makes the watch claimable again without a rescuer. Only ids, floats and
small tuples are kept: a million watches must fit in well under 1 GiB.
"""

from __future__ import annotations

import heapq
import itertools
import sys
from collections.abc import Iterable

# Rebuild the heap once stale entries outnumber live ones by this factor, so re-indexing on every poll
# cannot grow it without bound.
_COMPACT_FACTOR = 2
_COMPACT_MIN = 1024


class DueIndex:
    """Due times of unfinished watches plus the in-flight claims (lease token and expiry per job id)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._claims: dict[str, tuple[int, float]] = {}
        self._tokens = itertools.count(1)

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._due

    def clear(self) -> None:
        """Forget every entry and claim (before a restore)."""
        self._heap.clear()
        self._due.clear()
        self._claims.clear()

    def put(self, job_id: str, due: float) -> None:
        """Make `job_id` due at `due`, dropping any claim on it."""
        # Interned so that the heap tuple and the dict key share one string object.
        job_id = sys.intern(job_id)
        self._claims.pop(job_id, None)
        self._due[job_id] = due
        heapq.heappush(self._heap, (due, job_id))
        self._maybe_compact()

    def put_many(self, items: Iterable[tuple[str, float]]) -> None:
        """Index many watches at once, then heapify once (start-up with a million watches)."""
        for job_id, due in items:
            jid = sys.intern(job_id)
            self._claims.pop(jid, None)
            self._due[jid] = due
        self._heap = [(due, jid) for jid, due in self._due.items()]
        heapq.heapify(self._heap)

    def discard(self, job_id: str) -> None:
        """Drop a watch (finished or deleted); its heap entries go stale."""
        self._due.pop(job_id, None)
        self._claims.pop(job_id, None)

    def lease_of(self, job_id: str) -> int | None:
        """The token of the claim on `job_id`, None if it is not claimed."""
        claim = self._claims.get(job_id)
        return None if claim is None else claim[0]

    def claim(self, now: float, limit: int, lease_s: float) -> list[tuple[str, int]]:
        """Claim up to `limit` watches due at `now`, earliest first; returns `(job_id, lease token)` pairs.

        A surfacing entry whose watch is claimed is due at the claim's expiry, so it has expired: the watch
        is handed out again with a new token and the old holder's save will be fenced off.
        """
        out: list[tuple[str, int]] = []
        heap, due = self._heap, self._due
        expiry = now + lease_s
        while heap and len(out) < limit:
            at, job_id = heap[0]
            if at > now:
                break
            heapq.heappop(heap)
            if due.get(job_id) != at:
                continue  # stale
            token = next(self._tokens)
            self._claims[job_id] = (token, expiry)
            due[job_id] = expiry
            heapq.heappush(heap, (expiry, job_id))
            out.append((job_id, token))
        return out

    def unclaim(self, job_id: str, token: int) -> None:
        """Give back a claim that turned out to be unusable (its row vanished)."""
        if self.lease_of(job_id) == token:
            self.discard(job_id)

    def next_due_at(self) -> float | None:
        """The earliest due time; a claimed watch counts at its lease expiry, when it is claimable again."""
        heap, due = self._heap, self._due
        while heap and due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def count_due(self, now: float) -> int:
        """How many watches are due at `now`, in O(due) by walking only the heap's due prefix."""
        heap, due = self._heap, self._due
        seen: set[str] = set()
        stack = [0] if heap else []
        while stack:
            i = stack.pop()
            at, job_id = heap[i]
            if at > now:
                continue  # the heap property: nothing below is due either
            if due.get(job_id) == at:
                seen.add(job_id)
            stack.extend(c for c in (2 * i + 1, 2 * i + 2) if c < len(heap))
        return len(seen)

    def _maybe_compact(self) -> None:
        if len(self._heap) > _COMPACT_FACTOR * len(self._due) + _COMPACT_MIN:
            self._heap = [(at, jid) for jid, at in self._due.items()]
            heapq.heapify(self._heap)
