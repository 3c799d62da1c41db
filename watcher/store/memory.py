"""An in-memory `Store` for unit tests and `memory://`: the same semantics as SQLite, nothing durable.

Objects handed in and out are copies, so a caller mutating a `Watch` it was given cannot change the
store behind its back (as with a real database).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace

from watcher.models import (
    CALLBACK,
    Delivery,
    DeliveryState,
    DeliveryUpdate,
    EndpointHealth,
    Event,
    Registration,
    SavedPoll,
    Source,
    Watch,
)
from watcher.store.base import (
    Bound,
    DeliveryQuery,
    FailureNoted,
    JobTypeRow,
    MergeModel,
    RegisterResult,
    Regs,
    StoreCounts,
    SyncResult,
    WatchPage,
    WatchQuery,
    range_wanted,
)
from watcher.store.indexed import IndexedStore
from watcher.store.memory_groups import MemoryGroups
from watcher.store.memory_health import MemoryHealth
from watcher.store.memory_ranges import SourceRanges


def _copy_watch(w: Watch, lease: int = 0) -> Watch:
    return replace(w, labels=dict(w.labels), lease=lease)


def _new_watch(reg: Registration, now: float) -> Watch:
    return Watch(
        job_id=reg.job_id,
        workspace=reg.workspace,
        sources=int(reg.source),
        registered_at=now,
        labels=dict(reg.labels),
        webhooks=reg.webhooks,
        max_watch_s=reg.max_watch_s,
        next_poll_at=now,
        callback=reg.callback,
    )


def _apply_poll(stored: Watch, polled: Watch) -> None:
    """Copy the polling state of `polled` onto `stored`; what registration owns (sources, labels) stays."""
    stored.status = polled.status
    stored.final = polled.final
    stored.polls = polled.polls
    stored.streak = polled.streak
    stored.errors = polled.errors
    stored.not_found = polled.not_found
    stored.next_poll_at = polled.next_poll_at
    stored.last_polled_at = polled.last_polled_at
    stored.finished_at = polled.finished_at
    stored.last_error = polled.last_error
    stored.upstream_updated_at = polled.upstream_updated_at


class MemoryStore(MemoryHealth, MemoryGroups, IndexedStore):
    """Every watch, event and delivery in dicts; a `DueIndex` schedules the watches."""

    def __init__(self) -> None:
        super().__init__()
        self._watches: dict[str, Watch] = {}
        self._events: dict[str, Event] = {}  # insertion order is the order events happened
        self._events_by_job: dict[str, list[str]] = {}
        self._deliveries: dict[int, Delivery] = {}  # insertion order is id order
        self._lease_until: dict[int, float] = {}  # delivery id -> lease expiry, only while claimed
        self._delivery_ids = itertools.count(1)
        self._delivery_tokens = itertools.count(1)
        self._endpoints: dict[str, EndpointHealth] = {}
        self._job_types: dict[tuple[str, str], tuple[bytes, float]] = {}  # -> (model, updated_at), by update
        self._ranges = SourceRanges()

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release."""

    async def ping(self) -> bool:
        """Always reachable."""
        return True

    # -- watches --------------------------------------------------------------------------------------

    async def restore(self, now: float, first_due: Callable[[Watch], float]) -> int:
        """Re-index every unfinished watch at the due time `first_due` gives it."""
        self._index.clear()
        items = []
        for w in self._watches.values():
            if not w.finished and w.quarantined_at is None:
                w.next_poll_at = first_due(_copy_watch(w))
                items.append((w.job_id, w.next_poll_at))
        self._index.put_many(items)
        return len(items)

    async def register(self, regs: Sequence[Registration], now: float) -> list[RegisterResult]:
        """Add new watches due at `now`; existing ones only gain the source."""
        results = []
        gained = 0
        for reg in regs:
            w = self._watches.get(reg.job_id)
            if w is None:
                self._watches[reg.job_id] = _new_watch(reg, now)
                self._index.put(reg.job_id, now)
                results.append(RegisterResult.CREATED)
            else:
                w.sources |= int(reg.source)
                results.append(RegisterResult.EXISTING)
            gained |= int(reg.source)
        self._ranges.gained(gained)
        return results

    async def sync_source_range(
        self, source: Source, regs: Regs, lo: Bound, hi: Bound, now: float, *, remove: bool = True
    ) -> SyncResult:
        """Sync `source` over the id range `(lo, hi]`; counts are ids that joined, left or wait to leave."""
        bit = int(source)
        wanted = range_wanted(regs, lo, hi)
        items = ((j, w.sources) for j, w in self._watches.items())
        candidates = self._ranges.members(bit, lo, hi, items)
        joining = [
            replace(r, source=source)
            for j, r in wanted.items()
            if (w := self._watches.get(j)) is None or not w.sources & bit
        ]
        if joining:
            held = self._ranges.held()
            await self.register(joining, now)  # no await inside: nothing else registers meanwhile
            self._ranges.synced(held, bit, hi)
        leaving = [
            w
            for j in candidates
            if (w := self._watches.get(j)) is not None and w.sources & bit and j not in wanted
        ]
        if not remove:
            return SyncResult(added=len(joining), removed=0, waiting=len(leaving))
        for w in leaving:
            w.sources &= ~bit
            if w.sources == 0 and not w.finished:
                del self._watches[w.job_id]
                self._index.discard(w.job_id)
                self._drop_events(w.job_id, keep={DeliveryState.PENDING, DeliveryState.DEAD})
        return SyncResult(added=len(joining), removed=len(leaving))

    async def delete_watch(self, job_id: str) -> bool:
        """Forget the watch and its fully delivered events; pending and dead deliveries stay."""
        if self._watches.pop(job_id, None) is None:
            return False
        self._index.discard(job_id)
        self._drop_events(job_id, keep={DeliveryState.PENDING, DeliveryState.DEAD})
        return True

    async def get_watch(self, job_id: str) -> Watch | None:
        """A copy of one watch."""
        w = self._watches.get(job_id)
        return None if w is None else _copy_watch(w)

    async def _list_watches(self, query: WatchQuery) -> WatchPage:
        """Watches ordered by job id after `cursor` (the last id of the previous page)."""
        ids = sorted(j for j in self._watches if query.cursor is None or j > query.cursor)
        page: list[Watch] = []
        for job_id in ids:
            w = self._watches[job_id]
            if (
                (query.status is None or w.list_status == query.status)
                and (query.label is None or w.labels.get(query.label[0]) == query.label[1])
                and (query.workspaces is None or w.workspace in query.workspaces)
            ):
                if len(page) == query.limit:
                    return WatchPage(page, page[-1].job_id)
                page.append(_copy_watch(w))
        return WatchPage(page, None)

    async def claim_due(self, now: float, limit: int, lease_s: float) -> list[Watch]:
        """Claim due watches earliest first; each copy carries its lease token."""
        return [_copy_watch(self._watches[j], t) for j, t in self._index.claim(now, limit, lease_s)]

    async def save_polls(self, polls: Sequence[SavedPoll]) -> list[bool]:
        """Apply each fenced poll result with its new events and deliveries."""
        results = []
        for saved in polls:
            polled = saved.watch
            stored = self._watches.get(polled.job_id)
            if stored is None or not self._holds_lease(polled):
                results.append(False)
                continue
            _apply_poll(stored, polled)
            for new in saved.events:
                ev = new.event
                if ev.id in self._events:
                    continue
                self._events[ev.id] = ev
                self._events_by_job.setdefault(ev.job_id, []).append(ev.id)
                for name in new.webhooks:
                    did = next(self._delivery_ids)
                    self._deliveries[did] = Delivery(
                        id=did,
                        event=ev,
                        webhook=name,
                        state=DeliveryState.PENDING,
                        attempts=0,
                        next_attempt_at=ev.created_at,
                        created_at=ev.created_at,
                        callback=stored.callback if name == CALLBACK else None,
                    )
            self._reindex(stored)
            results.append(True)
        return results

    async def note_failure(
        self, watch: Watch, reason: str, now: float, retry_at: float, quarantine_after: int
    ) -> FailureNoted:
        """Count the failure on the stored watch; quarantine it (out of the index) at the limit."""
        stored = self._watches.get(watch.job_id)
        if stored is None or not self._holds_lease(watch):
            return FailureNoted(kept=False)
        stored.failures += 1
        stored.quarantine_reason = reason
        quarantined = stored.failures >= quarantine_after
        if quarantined:
            stored.quarantined_at = now
        else:
            stored.next_poll_at = retry_at
        self._reindex_after_failure(stored.job_id, quarantined, retry_at)
        return FailureNoted(True, stored.failures, quarantined=quarantined)

    async def release_quarantine(self, job_id: str, now: float) -> bool:
        """Clear the quarantine and the failure count; the watch is due at `now`."""
        stored = self._watches.get(job_id)
        if stored is None or stored.quarantined_at is None:
            return False
        stored.quarantined_at = None
        stored.failures = 0
        stored.next_poll_at = now
        if not stored.finished:
            self._index.put(job_id, now)
        return True

    async def purge_finished(self, before: float) -> int:
        """Delete old finished watches without a pending delivery, with their events."""
        pending = {d.event.job_id for d in self._deliveries.values() if d.state is DeliveryState.PENDING}
        old = [
            w.job_id
            for w in self._watches.values()
            if w.finished and w.finished_at is not None and w.finished_at < before and w.job_id not in pending
        ]
        for job_id in old:
            del self._watches[job_id]
            self._drop_events(job_id, keep={DeliveryState.PENDING})
        return len(old)

    def _drop_events(self, job_id: str, keep: set[DeliveryState]) -> None:
        """Delete a job's events (with their deliveries) unless one of their deliveries is in `keep`."""
        by_event: dict[str, list[Delivery]] = {}
        for d in self._deliveries.values():
            if d.event.job_id == job_id:
                by_event.setdefault(d.event.id, []).append(d)
        kept = []
        for eid in self._events_by_job.pop(job_id, []):
            ds = by_event.get(eid, [])
            if any(d.state in keep for d in ds):
                kept.append(eid)
                continue
            del self._events[eid]
            for d in ds:
                del self._deliveries[d.id]
                self._lease_until.pop(d.id, None)
        if kept:
            self._events_by_job[job_id] = kept

    # -- events and deliveries ------------------------------------------------------------------------

    async def events_for(self, job_id: str) -> list[Event]:
        """A job's events in the order they were stored."""
        return [self._events[e] for e in self._events_by_job.get(job_id, [])]

    def _heads(self) -> list[Delivery]:
        """The oldest pending delivery of every (job, webhook) pair: the only ones eligible."""
        heads: dict[tuple[str, str], Delivery] = {}
        for d in self._deliveries.values():
            if d.state is DeliveryState.PENDING:
                heads.setdefault((d.event.job_id, d.webhook), d)
        return list(heads.values())

    async def claim_deliveries(
        self, now: float, limit: int, lease_s: float, exclude: Collection[str] = ()
    ) -> list[Delivery]:
        """Claim due, unleased pair heads ordered by (next_attempt_at, id), none to an `exclude`d endpoint."""
        ready = [
            d
            for d in self._heads()
            if d.next_attempt_at <= now
            and self._lease_until.get(d.id, float("-inf")) <= now
            and d.endpoint not in exclude
            and not self._open(d.endpoint, now)
        ]
        ready.sort(key=lambda d: (d.next_attempt_at, d.id))
        token = next(self._delivery_tokens)
        out = []
        for d in ready[:limit]:
            d.lease = token
            self._lease_until[d.id] = now + lease_s
            out.append(replace(d))
        return out

    async def next_delivery_at(self) -> float | None:
        """Earliest time a pair head becomes claimable (a leased one counts at its lease expiry)."""
        times = [max(d.next_attempt_at, self._lease_until.get(d.id, float("-inf"))) for d in self._heads()]
        return min(times, default=None)

    async def finish_delivery(self, delivery: Delivery, update: DeliveryUpdate) -> bool:
        """Record an attempt if `delivery.lease` still holds; clears the lease."""
        d = self._deliveries.get(delivery.id)
        if d is None or d.state is not DeliveryState.PENDING or d.id not in self._lease_until:
            return False
        if d.lease != delivery.lease:
            return False
        d.state = update.state
        d.attempts = update.attempts
        d.next_attempt_at = update.next_attempt_at
        d.last_error = update.last_error
        d.delivered_at = update.delivered_at
        d.lease = 0
        del self._lease_until[d.id]
        return True

    async def _list_deliveries(self, query: DeliveryQuery) -> list[Delivery]:
        """Newest first, below the `before` cursor."""
        out: list[Delivery] = []
        for d in reversed(self._deliveries.values()):
            if len(out) == query.limit:
                break
            if (
                (query.before is None or d.id < query.before)
                and (query.state is None or d.state == query.state)
                and (query.webhook is None or d.webhook == query.webhook)
                and (query.job_id is None or d.event.job_id == query.job_id)
                and (query.workspaces is None or d.event.workspace in query.workspaces)
            ):
                out.append(replace(d))
        return out

    async def get_delivery(self, delivery_id: int) -> Delivery | None:
        """A copy of one delivery."""
        d = self._deliveries.get(delivery_id)
        return None if d is None else replace(d)

    async def retry_delivery(self, delivery_id: int, now: float) -> bool:
        """Dead back to pending, attempts reset, due at `now`."""
        d = self._deliveries.get(delivery_id)
        if d is None or d.state is not DeliveryState.DEAD:
            return False
        d.state = DeliveryState.PENDING
        d.attempts = 0
        d.next_attempt_at = now
        d.delivered_at = None
        d.lease = 0
        self._lease_until.pop(d.id, None)
        return True

    async def recent_events(self, limit: int) -> list[Event]:
        """The newest stored events first."""
        return list(itertools.islice(reversed(self._events.values()), max(0, limit)))

    async def load_job_types(self) -> list[JobTypeRow]:
        """The stored models, least recently updated first."""
        return [JobTypeRow(ws, name, model) for (ws, name), (model, _) in self._job_types.items()]

    async def merge_job_types(
        self, deltas: Sequence[JobTypeRow], merge: MergeModel, now: float, max_types: int
    ) -> list[JobTypeRow]:
        """Merge each delta into its type's model (one process: no concurrent writer to guard against)."""
        out = []
        for d in deltas:
            key = (d.workspace, d.name)
            old = self._job_types.pop(key, None)
            model = merge(None if old is None else old[0], d.model)
            self._job_types[key] = (model, now)
            out.append(JobTypeRow(d.workspace, d.name, model))
        while len(self._job_types) > max(1, max_types):
            del self._job_types[next(iter(self._job_types))]  # insertion order is update order
        return out

    async def watch_counts(self) -> dict[str, int]:
        """Watches per list status, finished ones included."""
        out: dict[str, int] = {}
        for w in self._watches.values():
            key = w.list_status
            out[key] = out.get(key, 0) + 1
        return out

    async def counts(self, on_snapshot: Callable[[], None] | None = None) -> StoreCounts:
        """Aggregates computed by scanning the dicts (without awaiting: the snapshot is the call)."""
        if on_snapshot is not None:
            on_snapshot()
        by_status: dict[str, int] = {}
        quarantined = 0
        for w in self._watches.values():
            if w.finished:
                continue
            if w.quarantined_at is not None:
                quarantined += 1
                continue
            key = w.status or "unknown"
            by_status[key] = by_status.get(key, 0) + 1
        pending: dict[str, int] = {}
        dead: dict[str, int] = {}
        oldest: float | None = None
        for d in self._deliveries.values():
            if d.state is DeliveryState.PENDING:
                pending[d.webhook] = pending.get(d.webhook, 0) + 1
                oldest = d.created_at if oldest is None else min(oldest, d.created_at)
            elif d.state is DeliveryState.DEAD:
                dead[d.webhook] = dead.get(d.webhook, 0) + 1
        return StoreCounts(by_status, pending, dead, oldest, quarantined)
