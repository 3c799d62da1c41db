"""The SQLite store's endpoint health: breakers with compare-and-set on their version, and the
`max_delivery_age_s` sweep (SPEC §13). A mixin of `SQLiteStore`, which owns the connections."""

from __future__ import annotations

from watcher.models import BreakerState, EndpointHealth
from watcher.store.base import Store
from watcher.store.sqlite.connection import Connections, select

_COLS = "endpoint, webhook, state, consecutive_failures, open_until, open_s, last_error, version"


class SQLiteEndpoints(Store):
    """Breakers and the age sweep of `SQLiteStore`."""

    connections: Connections

    async def endpoints(self) -> list[EndpointHealth]:
        """Every breaker, by endpoint."""
        async with self.connections.read() as db:
            rows = await select(db, f"SELECT {_COLS} FROM endpoints ORDER BY endpoint")  # noqa: S608
        return [EndpointHealth(r[0], r[1], BreakerState(r[2]), *r[3:]) for r in rows]

    async def put_endpoint(self, health: EndpointHealth) -> bool:
        """Insert (version 0) or update while the stored version is still `health.version`."""
        h = health
        values = (h.webhook, h.state.value, h.consecutive_failures, h.open_until, h.open_s, h.last_error)
        async with self.connections.write() as db:
            if h.version == 0:
                cur = await db.execute(
                    f"INSERT OR IGNORE INTO endpoints ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, 1)",  # noqa: S608
                    (h.endpoint, *values),
                )
            else:
                cur = await db.execute(
                    "UPDATE endpoints SET webhook = ?, state = ?, consecutive_failures = ?, open_until = ?,"
                    " open_s = ?, last_error = ?, version = version + 1 WHERE endpoint = ? AND version = ?",
                    (*values, h.endpoint, h.version),
                )
            return cur.rowcount > 0

    async def expire_deliveries(self, webhook: str, created_before: float, reason: str) -> int:
        """Unleased pending deliveries of `webhook` older than the cut-off become dead."""
        async with self.connections.write() as db:
            cur = await db.execute(
                "UPDATE deliveries SET state = 'dead', last_error = ? WHERE state = 'pending'"
                " AND webhook = ? AND created_at < ? AND lease IS NULL",
                (reason, webhook, created_before),
            )
            return cur.rowcount
