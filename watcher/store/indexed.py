"""The base of the single-process stores (memory, SQLite): their due index lives in this process.

Only one process writes such a store, so which watch is due next, and who holds a claim on it, is kept in
a `DueIndex` rather than in the tables: claims cost no write, and the lease a save is fenced by is the
index's. What reading a claimed watch takes is the backend's own (`claim_due`); giving claims back, the
next due time and the backlog are the index's alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from watcher.models import Watch
from watcher.store.base import Store
from watcher.store.due import DueIndex


class IndexedStore(Store):
    """A `Store` whose due times and claims are a `DueIndex` in memory."""

    def __init__(self) -> None:
        self._index = DueIndex()

    async def release(self, watches: Sequence[Watch]) -> None:
        """Make never-polled claims due again at their old due time, if the claim is still theirs."""
        for w in watches:
            self._index.release(w.job_id, w.lease, w.next_poll_at)

    async def next_due_at(self) -> float | None:
        """Earliest due time (a claimed watch counts at its lease expiry)."""
        return self._index.next_due_at()

    async def count_due(self, now: float) -> int:
        """Due watches not held by a live claim, from the index."""
        return self._index.count_due(now)

    def _holds_lease(self, watch: Watch) -> bool:
        """True while the claim `watch` was handed out with is still the current one."""
        return self._index.lease_of(watch.job_id) == watch.lease

    def _reindex(self, watch: Watch) -> None:
        """A saved watch is due again at its `next_poll_at`; a finished one leaves the index."""
        if watch.final is None:
            self._index.put(watch.job_id, watch.next_poll_at)
        else:
            self._index.discard(watch.job_id)

    def _reindex_after_failure(self, job_id: str, quarantined: bool, retry_at: float) -> None:
        """After a noted failure: due again at `retry_at`, or out of the index once quarantined."""
        if quarantined:
            self._index.discard(job_id)
        else:
            self._index.put(job_id, retry_at)
