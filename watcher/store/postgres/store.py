"""The PostgreSQL store: several replicas share one database and lease the work (SPEC §11).

Claims are one statement each: a MATERIALIZED CTE picks due rows `FOR UPDATE SKIP LOCKED` (replicas never
wait on each other's picks) and feeds an `UPDATE … RETURNING` that moves the due time to `now() + lease_s` and
stamps a new lease token from a sequence. The due time doubles as the lease expiry, so a crashed replica's
watches and deliveries become due again by themselves: no rescuer, no leader. Every write of a result is
fenced by `(id, lease)`: 0 rows means the lease was lost and nothing of that item is written. Each method is
one short transaction; none is open while an HTTP request is in flight.

Clock: with `shared=True` (the default) due times and leases follow the database's clock: the `now` arguments
of claims, counts, registrations and retries are ignored, and times computed by a replica (`next_poll_at`, a
retry's `next_attempt_at`, `first_due`) are stored as the database's now plus the delay the replica meant, so
replicas with skewed clocks still agree. `shared=False` takes every time as given and makes `restore` take
all leases back, like the single-process SQLite store: the store contract suite runs that way on a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from watcher.clock import Clock, SystemClock
from watcher.models import (
    CALLBACK,
    Callback,
    Delivery,
    DeliveryUpdate,
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
    RegisterResult,
    Regs,
    Store,
    StoreCounts,
    SyncResult,
    WatchPage,
    WatchQuery,
    range_wanted,
)
from watcher.store.postgres import sql as q
from watcher.store.postgres.conn import PgPool, PgTarget, columns, dumps, parse_url
from watcher.store.postgres.endpoints import PgEndpoints
from watcher.store.postgres.groups import PgGroups
from watcher.store.postgres.jobtypes import PgJobTypes
from watcher.store.sql import (
    DELIVERIES_BY_WEBHOOK,
    OLDEST_PENDING,
    QUARANTINED_COUNT,
    WATCH_COUNTS,
    WATCHED_BY_STATUS,
)

_RESTORE_PAGE = 5000


class PostgresStore(PgEndpoints, PgGroups, PgJobTypes, Store):
    """A store shared by every replica: leased claims, fenced writes, the database's clock; its endpoint
    health is `PgEndpoints`'s, its job types `PgJobTypes`'s."""

    def __init__(self, url: str, *, shared: bool = True, clock: Clock | None = None) -> None:
        self.target: PgTarget = parse_url(url)
        self.shared = shared
        self._clock = clock or SystemClock()
        self.pool = PgPool(self.target, self._clock)
        self.schema_version = 0

    # -- lifecycle ------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the pool and apply pending migrations (once, whichever replica gets the lock first)."""
        if not self.pool.is_open:
            self.schema_version = await self.pool.open()

    async def close(self) -> None:
        """Close the pool; safe to call twice."""
        await self.pool.close()

    async def ping(self) -> bool:
        """True if the database answers a trivial query within a few seconds."""
        return await self.pool.ping()

    def _now(self, now: float) -> float | None:
        """The `now` to send: None makes the SQL use the database clock."""
        return None if self.shared else now

    def _at(self, when: float) -> tuple[float | None, float]:
        """`(base, offset)`: SQL stores `coalesce(base, db now) + offset` for the replica's time `when`."""
        if self.shared:
            return None, when - self._clock.now()
        return 0.0, when

    async def _claim(
        self, sql: str, now: float, limit: int, lease_s: float, key: str, *more: object
    ) -> list[asyncpg.Record]:
        """Run a claim statement: its rows, earliest due first (then by `key`); none when `limit` is 0."""
        if limit <= 0:
            return []
        rows = await self.pool.run(lambda c: c.fetch(sql, self._now(now), limit, lease_s, *more), tx=False)
        return sorted(rows, key=lambda r: (r["due"], r[key]))

    # -- watches --------------------------------------------------------------------------------------

    async def restore(self, now: float, first_due: Callable[[Watch], float]) -> int:
        """Spread overdue watches with `first_due`; a shared store leaves watches leased to others alone.

        Only watches already due (a crashed replica's expired leases included) are rescheduled, so a replica
        starting next to running ones does not postpone their work or break their leases.
        """

        async def page(conn: asyncpg.Connection, last: str) -> list[Watch]:
            rows = await conn.fetch(q.RESTORE_PAGE, self._now(now), self.shared, last, _RESTORE_PAGE)
            watches = [q.watch_row(r) for r in rows]
            due = columns(((w.job_id, *self._at(first_due(w))) for w in watches), 3)
            await conn.execute(q.RESTORE_SET, *due)
            return watches

        last = ""
        while True:
            got = await self.pool.run(lambda c, last=last: page(c, last))  # type: ignore[misc]
            if len(got) < _RESTORE_PAGE:
                break
            last = got[-1].job_id
        async with self.pool.connection() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM watches WHERE final IS NULL"))

    async def register(self, regs: Sequence[Registration], now: float) -> list[RegisterResult]:
        """Insert new watches due now; OR the source into existing ones (concurrent replicas included)."""
        return await self.pool.run(lambda c: self._register(c, regs, now))

    async def _register(
        self, conn: asyncpg.Connection, regs: Sequence[Registration], now: float
    ) -> list[RegisterResult]:
        first: dict[str, Registration] = {}
        bits: dict[str, int] = {}
        for reg in regs:
            first.setdefault(reg.job_id, reg)
            bits[reg.job_id] = bits.get(reg.job_id, 0) | int(reg.source)
        rs = list(first.values())
        created = {
            r["job_id"]
            for r in await conn.fetch(
                q.REGISTER_INSERT,
                [r.job_id for r in rs],
                [r.workspace for r in rs],
                [bits[r.job_id] for r in rs],
                [dumps(r.labels) for r in rs],
                [None if r.webhooks is None else dumps(list(r.webhooks)) for r in rs],
                [r.max_watch_s for r in rs],
                self._now(now),
                [None if r.callback is None else dumps(r.callback.to_dict()) for r in rs],
            )
        }
        existing = [j for j in first if j not in created]
        await conn.execute(q.REGISTER_MERGE, existing, [bits[j] for j in existing])
        out, seen = [], set()
        for reg in regs:
            new = reg.job_id in created and reg.job_id not in seen
            seen.add(reg.job_id)
            out.append(RegisterResult.CREATED if new else RegisterResult.EXISTING)
        return out

    async def sync_source_range(
        self, source: Source, regs: Regs, lo: Bound, hi: Bound, now: float, *, remove: bool = True
    ) -> SyncResult:
        """Sync `source` over the id range `(lo, hi]`; replicas syncing the same source take turns."""
        bit = int(source)
        wanted = range_wanted(regs, lo, hi)
        members, bounds = q.source_members(lo, hi)

        async def work(conn: asyncpg.Connection) -> SyncResult:
            await conn.execute(q.LOCK, f"sync:{bit}")
            have = {r["job_id"]: r for r in await conn.fetch(members, bit, *bounds)}
            joining = [Registration(r.job_id, r.workspace, source, r.labels, r.webhooks, r.max_watch_s)
                       for j, r in wanted.items() if j not in have]  # fmt: skip
            if joining:
                await self._register(conn, joining, now)
            leaving = [j for j in have if j not in wanted]
            if not remove:
                return SyncResult(added=len(joining), removed=0, waiting=len(leaving))
            gone = [j for j in leaving if have[j]["sources"] == bit and have[j]["final"] is None]
            await conn.execute(q.SOURCE_DROP, leaving, ~bit)
            # As `delete_watch`: the watch goes with its events, except those still to deliver or replay.
            await self._drop_events(conn, gone, ["pending", "dead"])
            await conn.execute(q.DELETE_WATCHES, gone)
            return SyncResult(added=len(joining), removed=len(leaving))

        return await self.pool.run(work)

    async def delete_watch(self, job_id: str) -> bool:
        """Delete the watch and its fully delivered events; pending and dead deliveries stay."""

        async def work(conn: asyncpg.Connection) -> bool:
            deleted = await conn.fetch("DELETE FROM watches WHERE job_id = $1 RETURNING job_id", job_id)
            if deleted:
                await self._drop_events(conn, [job_id], ["pending", "dead"])
            return bool(deleted)

        return await self.pool.run(work)

    async def _drop_events(self, conn: asyncpg.Connection, job_ids: list[str], keep: list[str]) -> None:
        await conn.execute(q.DROP_EVENT_DELIVERIES, job_ids, keep)
        await conn.execute(q.DROP_EVENTS, job_ids)

    async def get_watch(self, job_id: str) -> Watch | None:
        """One watch by id."""
        async with self.pool.connection() as conn:
            row = await conn.fetchrow(f"SELECT {q.WATCH_COLS} FROM watches WHERE job_id = $1", job_id)  # noqa: S608
        return None if row is None else q.watch_row(row)

    async def _list_watches(self, query: WatchQuery) -> WatchPage:
        """Watches ordered by job id after `cursor`; the label filter uses the GIN index on labels."""
        contains = None if query.label is None else {query.label[0]: query.label[1]}
        async with self.pool.connection() as conn:
            rows = await conn.fetch(
                q.LIST_WATCHES,
                query.cursor or "",
                query.status,
                contains,
                query.limit + 1,
                None if query.workspaces is None else list(query.workspaces),
            )
        page = [q.watch_row(r) for r in rows[: query.limit]]
        return WatchPage(page, page[-1].job_id if len(rows) > query.limit and page else None)

    async def claim_due(self, now: float, limit: int, lease_s: float) -> list[Watch]:
        """Lease up to `limit` due watches (skipping rows another replica is claiming), earliest first."""
        out = []
        for r in await self._claim(q.CLAIM_WATCHES, now, limit, lease_s, "job_id"):
            w = q.watch_row(r)
            w.next_poll_at = r["due"]  # the caller sees when it was due, not the lease expiry
            out.append(w)
        return out

    async def release(self, watches: Sequence[Watch]) -> None:
        """End the leases of never-polled claims; each is due again at its old due time."""
        if not watches:
            return
        ids = [w.job_id for w in watches]
        leases = [w.lease for w in watches]
        dues = [w.next_poll_at for w in watches]
        await self.pool.run(lambda c: c.execute(q.RELEASE_WATCHES, ids, leases, dues), tx=False)

    async def next_due_at(self) -> float | None:
        """Earliest due time of an unfinished watch (a claimed one counts at its lease expiry)."""
        async with self.pool.connection() as conn:
            value = await conn.fetchval(q.NEXT_DUE)
        return None if value is None else float(value)

    async def count_due(self, now: float) -> int:
        """Unfinished watches due now and not under a live lease."""
        async with self.pool.connection() as conn:
            return int(await conn.fetchval(q.COUNT_DUE, self._now(now)))

    async def save_polls(self, polls: Sequence[SavedPoll]) -> list[bool]:
        """One transaction: fenced watch updates, then de-duplicated events and their deliveries."""
        keys = list(dict.fromkeys((p.watch.job_id, p.watch.lease) for p in polls))
        by_key: dict[tuple[str, int], SavedPoll] = {}
        for p in polls:
            by_key.setdefault((p.watch.job_id, p.watch.lease), p)

        async def work(conn: asyncpg.Connection) -> set[tuple[str, int]]:
            ws = [by_key[k].watch for k in sorted(keys)]  # one lock order for every replica
            at = [self._at(w.next_poll_at) for w in ws]
            cols = [[getattr(w, c) for w in ws] for c in q.SAVE_FIELDS]
            rows = await conn.fetch(q.SAVE_WATCHES, *cols, *columns(at, 2))
            kept = {(r["job_id"], r["lease"]) for r in rows}
            events: dict[str, tuple[Event, tuple[str, ...], Callback | None]] = {}
            for k in keys:  # the callers' order: events of one job keep the order they happened
                if k in kept:
                    cb = by_key[k].watch.callback
                    for new in by_key[k].events:
                        events.setdefault(new.event.id, (new.event, new.webhooks, cb))
            if events:
                await self._insert_events(conn, list(events.values()))
            return kept

        kept = await self.pool.run(work)
        ok, taken = [], set()
        for p in polls:
            key = (p.watch.job_id, p.watch.lease)
            ok.append(key in kept and key not in taken)
            taken.add(key)
        return ok

    async def _insert_events(
        self, conn: asyncpg.Connection, events: list[tuple[Event, tuple[str, ...], Callback | None]]
    ) -> None:
        evs = [e for e, _, _ in events]
        new = {
            r["id"]
            for r in await conn.fetch(
                q.INSERT_EVENTS,
                *columns(
                    ((e.id, e.job_id, e.workspace, e.type, e.created_at, dumps(e.payload)) for e in evs), 6
                ),
            )
        }
        rows = [
            (e, name, cb if name == CALLBACK else None)
            for e, hooks, cb in events
            if e.id in new
            for name in hooks
        ]
        # Shared: a new delivery is due at the database's now, whatever the detecting replica's clock says.
        await conn.execute(
            q.INSERT_DELIVERIES,
            [e.id for e, _, _ in rows],
            [e.job_id for e, _, _ in rows],
            [n for _, n, _ in rows],
            [None if self.shared else e.created_at for e, _, _ in rows],
            [e.created_at for e, _, _ in rows],
            [None if cb is None else dumps(cb.to_dict()) for _, _, cb in rows],
            [None if cb is None else cb.endpoint for _, _, cb in rows],
        )

    async def note_failure(
        self, watch: Watch, reason: str, now: float, retry_at: float, quarantine_after: int
    ) -> FailureNoted:
        """Count the failure, fenced by the claim's lease; quarantine at the limit (database clock)."""
        base, offset = self._at(retry_at)
        args = (watch.job_id, watch.lease, reason, base, offset, quarantine_after, self._now(now))
        rows = await self.pool.run(lambda c: c.fetch(q.NOTE_FAILURE, *args), tx=False)
        if not rows:
            return FailureNoted(kept=False)
        failures = int(rows[0]["failures"])
        return FailureNoted(True, failures, quarantined=failures >= quarantine_after)

    async def release_quarantine(self, job_id: str, now: float) -> bool:
        """Clear the quarantine and the failure count; the watch is due now."""
        rows = await self.pool.run(lambda c: c.fetch(q.RELEASE_QUARANTINE, job_id, self._now(now)), tx=False)
        return bool(rows)

    async def purge_finished(self, before: float) -> int:
        """Delete old finished watches and their events without a pending delivery; one replica at a time."""

        async def work(conn: asyncpg.Connection) -> int:
            if not await conn.fetchval(q.TRY_LOCK, "purge"):
                return 0  # another replica is purging right now
            ids = [r["job_id"] for r in await conn.fetch(q.FINISHED_BEFORE, before)]
            await self._drop_events(conn, ids, ["pending"])
            await conn.execute(q.DELETE_WATCHES, ids)
            return len(ids)

        return await self.pool.run(work)

    # -- events and deliveries ------------------------------------------------------------------------

    async def events_for(self, job_id: str) -> list[Event]:
        """A job's events in the order they were stored."""
        async with self.pool.connection() as conn:
            rows = await conn.fetch(f"{q.EVENT_SELECT} WHERE e.job_id = $1 ORDER BY e.seq", job_id)
        return [q.event_row(r) for r in rows]

    async def recent_events(self, limit: int) -> list[Event]:
        """The newest stored events first."""
        async with self.pool.connection() as conn:
            rows = await conn.fetch(f"{q.EVENT_SELECT} ORDER BY e.seq DESC LIMIT $1", max(0, limit))
        return [q.event_row(r) for r in rows]

    async def claim_deliveries(
        self, now: float, limit: int, lease_s: float, exclude: Collection[str] = ()
    ) -> list[Delivery]:
        """Lease due pair heads (the oldest pending delivery of each job and webhook), oldest first."""
        out = []
        for r in await self._claim(q.CLAIM_DELIVERIES, now, limit, lease_s, "id", sorted(exclude)):
            d = q.delivery_row(r)
            d.next_attempt_at = r["due"]
            out.append(d)
        return out

    async def next_delivery_at(self) -> float | None:
        """Earliest time a pair head becomes claimable (a leased one counts at its lease expiry)."""
        async with self.pool.connection() as conn:
            value = await conn.fetchval(q.NEXT_DELIVERY)
        return None if value is None else float(value)

    async def finish_delivery(self, delivery: Delivery, update: DeliveryUpdate) -> bool:
        """Record an attempt if `delivery.lease` still holds; clears the lease."""
        base, offset = self._at(update.next_attempt_at)
        args = (update.state.value, update.attempts, base, offset, update.last_error, update.delivered_at)
        rows = await self.pool.run(
            lambda c: c.fetch(q.FINISH_DELIVERY, *args, delivery.id, delivery.lease), tx=False
        )
        return bool(rows)

    async def _list_deliveries(self, query: DeliveryQuery) -> list[Delivery]:
        """Newest first below the `before` cursor, optionally filtered by state, webhook and job."""
        async with self.pool.connection() as conn:
            rows = await conn.fetch(
                q.LIST_DELIVERIES,
                query.state,
                query.webhook,
                query.before,
                query.job_id,
                query.limit,
                None if query.workspaces is None else list(query.workspaces),
            )
        return [q.delivery_row(r) for r in rows]

    async def get_delivery(self, delivery_id: int) -> Delivery | None:
        """One delivery with its event."""
        async with self.pool.connection() as conn:
            row = await conn.fetchrow(f"{q.DELIVERY_SELECT} WHERE d.id = $1", delivery_id)
        return None if row is None else q.delivery_row(row)

    async def retry_delivery(self, delivery_id: int, now: float) -> bool:
        """Dead back to pending, attempts reset, due now."""
        rows = await self.pool.run(lambda c: c.fetch(q.RETRY_DELIVERY, self._now(now), delivery_id), tx=False)
        return bool(rows)

    async def counts(self, on_snapshot: Callable[[], None] | None = None) -> StoreCounts:
        """Aggregates from SQL (every replica reports the same values: aggregate them with max), from one
        REPEATABLE READ snapshot, fixed by its first statement."""
        async with (
            self.pool.connection() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            await conn.fetchval("SELECT 1")
            if on_snapshot is not None:
                on_snapshot()
            by_status = await conn.fetch(WATCHED_BY_STATUS)
            by_hook = await conn.fetch(DELIVERIES_BY_WEBHOOK)
            oldest = await conn.fetchval(OLDEST_PENDING)
            quarantined = await conn.fetchval(QUARANTINED_COUNT)
        pending = {r["webhook"]: r["n"] for r in by_hook if r["state"] == "pending"}
        dead = {r["webhook"]: r["n"] for r in by_hook if r["state"] == "dead"}
        return StoreCounts({r["s"]: r["n"] for r in by_status}, pending, dead, oldest, int(quarantined))

    async def watch_counts(self) -> dict[str, int]:
        """Watches per list status, finished ones included."""
        async with self.pool.connection() as conn:
            rows = await conn.fetch(WATCH_COUNTS)
        return {r["s"]: r["n"] for r in rows}
