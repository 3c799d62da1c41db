"""Nested rate limits: one token bucket per workspace inside the upstream's (SPEC §3, §5).

A poll takes a token from its workspace's bucket and one from the upstream's. A 429 is an answer about
one workspace's quota, so it slows that workspace's bucket (and, through the policy, that watch's error
backoff); the polls of the other workspaces go on at their rate.

The upstream's bucket is slowed only by what concerns the whole upstream: a 429 at a moment when a
majority of the workspaces are throttled (more than half of them; with one workspace, that one). Many
workspaces rate-limited together is the upstream's own limit, not a tenant's quota, so everyone slows
down. A 5xx says nothing about a quota: it has the watch's error backoff (never shorter than its
Retry-After) and touches no bucket. Successful polls recover both buckets, as before.

A workspace's bucket is consulted only while it is tighter than the upstream's: a 429 throttles it, or
its configured rate is lower. Otherwise the upstream's bucket binds first, and polls wait for it as they
always did, due in the store (the backlog `watcher_polls_due` counts). A workspace's bucket that has no
token now does not make the scheduler wait: `take` reserves the
watch's token for a later slot and says when, and the scheduler saves the watch due then and moves on to
other workspaces' polls (no head-of-line blocking). When the watch comes back it uses its reserved token,
so postponed watches keep their place in line and a watch that keeps coming due cannot overtake one that
waits (no starvation). Only the upstream's bucket, which binds every poll alike, is awaited.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from prometheus_client import Gauge

from watcher.clock import Clock
from watcher.polling.ratelimit import TokenBucket

# A reservation not used this long after its slot is forgotten (its watch was deleted, finished elsewhere,
# or came back so late that taking a new token is no loss).
STALE_RESERVATION_S = 60.0


class Buckets:
    """The upstream's token bucket and one per workspace inside it.

    `workspace_rates` names the configured workspaces and their rates (None: the upstream's rate). A
    workspace that is not configured (a watch left from an older config) gets a bucket at the upstream's
    rate when first seen; its polls are refused by the client anyway.
    """

    def __init__(
        self,
        clock: Clock,
        rate_per_s: float,
        workspace_rates: Mapping[str, float | None] | None = None,
        *,
        throttled_gauge: Gauge | None = None,
    ) -> None:
        self._clock = clock
        self._rate = rate_per_s
        self.upstream = TokenBucket(rate_per_s, clock)
        self._gauge = throttled_gauge
        self._workspaces: dict[str, TokenBucket] = {}
        self._throttled: set[str] = set()
        self._own_rate: set[str] = set()  # workspaces configured below the upstream's rate
        # Postponed watches: job id -> the monotonic slot its token is reserved for; and in slot order, to
        # forget the stale ones.
        self._reserved: dict[str, float] = {}
        self._reserved_order: deque[tuple[float, str]] = deque()
        for slug, rate in (workspace_rates or {}).items():
            self._add(slug, rate)

    def _add(self, slug: str, rate: float | None) -> TokenBucket:
        bucket = TokenBucket(rate if rate is not None else self._rate, self._clock)
        self._workspaces[slug] = bucket
        if rate is not None and rate < self._rate:
            self._own_rate.add(slug)
        if self._gauge is not None:
            self._gauge.labels(workspace=slug).set(0)
        return bucket

    def workspace(self, slug: str) -> TokenBucket:
        """The bucket of workspace `slug`."""
        bucket = self._workspaces.get(slug)
        return bucket if bucket is not None else self._add(slug, None)

    def take(self, slug: str, job_id: str) -> float | None:
        """A token of workspace `slug` for a poll of `job_id`: None to poll now, else the monotonic time its
        token is reserved for, when the caller comes back.

        A watch that comes back at its reserved slot uses that token; one that comes back early is told the
        same slot again; one whose slot a later 429's hold covers reserves anew. The upstream's token is
        not taken here: the caller awaits `upstream.acquire` once this said None.
        """
        bucket = self.workspace(slug)
        now = self._clock.monotonic()
        slot = self._reserved.get(job_id)
        if slot is not None:
            if bucket.held():
                del self._reserved[job_id]
            elif now + 1e-6 >= slot:
                del self._reserved[job_id]
                return None
            else:
                return slot
        if slug not in self._throttled and slug not in self._own_rate:
            # Its bucket is no tighter than the upstream's, which the caller awaits: that one binds, and
            # the backlog stays due in the store (`watcher_polls_due`) rather than postponed.
            return None
        slot = bucket.reserve()
        if slot is not None:
            self._reserved[job_id] = slot
            self._reserved_order.append((slot, job_id))
            self._forget_stale(now)
        return slot

    def _forget_stale(self, now: float) -> None:
        order, reserved = self._reserved_order, self._reserved
        while order and order[0][0] < now - STALE_RESERVATION_S:
            slot, job_id = order.popleft()
            if reserved.get(job_id) == slot:
                del reserved[job_id]

    @property
    def reservations(self) -> int:
        """Postponed polls holding a reserved token (stale ones are forgotten as new ones come)."""
        return len(self._reserved)

    @property
    def throttled(self) -> frozenset[str]:
        """The workspaces whose rate a 429 keeps below their configured rate."""
        return frozenset(self._throttled)

    def penalize(self, slug: str, retry_after_s: float | None) -> None:
        """A 429 from workspace `slug`: slow its bucket; slow the upstream's too if most workspaces are
        throttled now."""
        self.workspace(slug).penalize(retry_after_s)
        if slug not in self._throttled:
            self._throttled.add(slug)
            self._set_gauge(slug, 1)
        if 2 * len(self._throttled) > len(self._workspaces):
            self.upstream.penalize(retry_after_s)

    def reward(self, slug: str) -> None:
        """A successful poll of workspace `slug`: both its bucket and the upstream's recover."""
        self.upstream.reward()
        if slug in self._throttled:
            bucket = self._workspaces[slug]
            bucket.reward()
            if not bucket.throttled:
                self._throttled.discard(slug)
                self._set_gauge(slug, 0)

    def _set_gauge(self, slug: str, value: float) -> None:
        if self._gauge is not None:
            self._gauge.labels(workspace=slug).set(value)


__all__ = ["Buckets"]
