"""The SQLite store's outbox: events and their deliveries, and the aggregates of the gauges.

Everything here runs on the aiosqlite connection under the store's lock (`Connections`), never on the hot
connection of the scheduler. Delivery leases live in the table, so a claim and its fencing are one UPDATE.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import aiosqlite

from watcher.models import Delivery, DeliveryUpdate, Event
from watcher.store.base import DeliveryQuery, Store, StoreCounts
from watcher.store.sql import (
    DELIVERIES_BY_WEBHOOK,
    OLDEST_PENDING,
    QUARANTINED_COUNT,
    WATCH_COUNTS,
    WATCHED_BY_STATUS,
)
from watcher.store.sqlite.connection import Connections, select
from watcher.store.sqlite.health import rollback_async
from watcher.store.sqlite.sql import (
    DELIVERY_SELECT,
    EVENT_SELECT,
    FINISH_DELIVERY,
    NEXT_DELIVERY,
    RETRY_DELIVERY,
    chunks,
    claimable_deliveries,
    delivery_row,
    event_row,
    marks,
)


class SQLiteOutbox(Store):
    """The events, deliveries and aggregates part of `SQLiteStore`, which owns the connections."""

    connections: Connections
    _delivery_tokens: int

    async def events_for(self, job_id: str) -> list[Event]:
        """A job's events in the order they were stored."""
        async with self.connections.read() as db:
            rows = await select(db, f"{EVENT_SELECT} WHERE job_id = ? ORDER BY seq", (job_id,))
        return [event_row(r) for r in rows]

    async def recent_events(self, limit: int) -> list[Event]:
        """The newest stored events first, walking the primary key backwards."""
        async with self.connections.read() as db:
            rows = await select(db, f"{EVENT_SELECT} ORDER BY seq DESC LIMIT ?", (max(0, limit),))
        return [event_row(r) for r in rows]

    async def claim_deliveries(
        self, now: float, limit: int, lease_s: float, exclude: Collection[str] = ()
    ) -> list[Delivery]:
        """Claim due, unleased pair heads ordered by (next_attempt_at, id) with one UPDATE."""
        skip = sorted(exclude)
        async with self.connections.write() as db:
            rows = await select(db, claimable_deliveries(len(skip)), (now, now, now, *skip, limit))
            return await self._lease_rows(db, rows, now, lease_s)

    async def _lease_rows(
        self, db: aiosqlite.Connection, rows: Sequence[Any], now: float, lease_s: float
    ) -> list[Delivery]:
        """Lease the selected delivery `rows` under one new token, in the caller's write transaction."""
        if not rows:
            return []
        self._delivery_tokens += 1
        token = self._delivery_tokens
        for chunk in chunks([r[0] for r in rows]):
            await db.execute(
                f"UPDATE deliveries SET lease = ?, lease_until = ? WHERE id IN ({marks(len(chunk))})",  # noqa: S608
                (token, now + lease_s, *chunk),
            )
        out = [delivery_row(r) for r in rows]
        for d in out:
            d.lease = token
        return out

    async def next_delivery_at(self) -> float | None:
        """Earliest time a pair head becomes claimable (a leased one counts at its lease expiry)."""
        async with self.connections.read() as db:
            rows = await select(db, NEXT_DELIVERY)
        times = [t for t in rows[0] if t is not None]
        return min(times, default=None)

    async def finish_delivery(self, delivery: Delivery, update: DeliveryUpdate) -> bool:
        """Record an attempt if `delivery.lease` still holds; clears the lease."""
        u = update
        row = (u.state.value, u.attempts, u.next_attempt_at, u.last_error, u.delivered_at)
        async with self.connections.write() as db:
            cur = await db.execute(FINISH_DELIVERY, (*row, delivery.id, delivery.lease))
            return cur.rowcount > 0

    async def _list_deliveries(self, query: DeliveryQuery) -> list[Delivery]:
        """Newest first below the `before` cursor, optionally filtered by state, webhook and job."""
        where: list[str] = ["1"]
        params: list[Any] = []
        for clause, value in (
            ("d.state = ?", query.state),
            ("d.webhook = ?", query.webhook),
            ("d.id < ?", query.before),
            # Through the events' job index and deliveries_event: no extra index needed.
            ("d.event_id IN (SELECT id FROM events WHERE job_id = ?)", query.job_id),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        if query.workspaces is not None:
            where.append(f"e.workspace IN ({', '.join('?' * len(query.workspaces))})")
            params += query.workspaces
        sql = f"{DELIVERY_SELECT} WHERE {' AND '.join(where)} ORDER BY d.id DESC LIMIT ?"
        async with self.connections.read() as db:
            rows = await select(db, sql, (*params, query.limit))
        return [delivery_row(r) for r in rows]

    async def get_delivery(self, delivery_id: int) -> Delivery | None:
        """One delivery with its event."""
        async with self.connections.read() as db:
            rows = await select(db, f"{DELIVERY_SELECT} WHERE d.id = ?", (delivery_id,))
        return delivery_row(rows[0]) if rows else None

    async def retry_delivery(self, delivery_id: int, now: float) -> bool:
        """Dead back to pending, attempts reset, due at `now`."""
        async with self.connections.write() as db:
            cur = await db.execute(RETRY_DELIVERY, (now, delivery_id))
            return cur.rowcount > 0

    async def watch_counts(self) -> dict[str, int]:
        """Watches per list status, finished ones included (one scan of the table)."""
        async with self.connections.read() as db:
            rows = await select(db, WATCH_COUNTS)
        return dict(rows)

    async def counts(self, on_snapshot: Callable[[], None] | None = None) -> StoreCounts:
        """Aggregates from SQL, so the gauges are exact after a restart; one read transaction, whose WAL
        snapshot its first read fixes."""
        async with self.connections.read() as db:
            await db.execute("BEGIN")
            try:
                await select(db, "SELECT 1 FROM watches LIMIT 1")
                if on_snapshot is not None:
                    on_snapshot()
                by_status = await select(db, WATCHED_BY_STATUS)
                quarantined = await select(db, QUARANTINED_COUNT)
                by_hook = await select(db, DELIVERIES_BY_WEBHOOK)
                oldest = await select(db, OLDEST_PENDING)
            finally:
                await rollback_async(db)
        pending = {hook: n for hook, state, n in by_hook if state == "pending"}
        dead = {hook: n for hook, state, n in by_hook if state == "dead"}
        return StoreCounts(dict(by_status), pending, dead, oldest[0][0], quarantined[0][0])
