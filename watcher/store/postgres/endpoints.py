"""The PostgreSQL store's endpoint health: breakers with compare-and-set on their version, so two replicas
never both take the probe of an open endpoint, and the `max_delivery_age_s` sweep (SPEC §13). A mixin of
`PostgresStore`, which owns the pool.

Breaker times (`open_until`) are the writing replica's clock, not the database's: replicas are expected to
keep their clocks in sync (NTP), as the delivery timestamps that receivers check already require.
"""

from __future__ import annotations

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from watcher.models import BreakerState, EndpointHealth
from watcher.store.base import Store
from watcher.store.postgres.conn import PgPool

_COLS = "endpoint, webhook, state, consecutive_failures, open_until, open_s, last_error, version"
_INSERT = f"""
INSERT INTO endpoints ({_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, 1)
ON CONFLICT (endpoint) DO NOTHING
RETURNING endpoint"""  # noqa: S608
_UPDATE = """
UPDATE endpoints SET webhook = $2, state = $3, consecutive_failures = $4, open_until = $5, open_s = $6,
    last_error = $7, version = version + 1
WHERE endpoint = $1 AND version = $8
RETURNING endpoint"""
_EXPIRE = """
UPDATE deliveries SET state = 'dead', last_error = $1
WHERE state = 'pending' AND webhook = $2 AND created_at < $3 AND lease IS NULL"""


class PgEndpoints(Store):
    """Breakers and the age sweep of `PostgresStore`."""

    pool: PgPool

    async def endpoints(self) -> list[EndpointHealth]:
        """Every breaker, by endpoint."""
        async with self.pool.connection() as conn:
            rows = await conn.fetch(f"SELECT {_COLS} FROM endpoints ORDER BY endpoint")  # noqa: S608
        return [
            EndpointHealth(
                r["endpoint"],
                r["webhook"],
                BreakerState(r["state"]),
                r["consecutive_failures"],
                r["open_until"],
                r["open_s"],
                r["last_error"],
                r["version"],
            )
            for r in rows
        ]

    async def put_endpoint(self, health: EndpointHealth) -> bool:
        """Insert (version 0) or update while the stored version is still `health.version`."""
        h = health
        args = (
            h.endpoint, h.webhook, h.state.value, h.consecutive_failures, h.open_until, h.open_s,
            h.last_error,
        )  # fmt: skip

        async def work(conn: asyncpg.Connection) -> object:
            if h.version == 0:
                return await conn.fetchval(_INSERT, *args)
            return await conn.fetchval(_UPDATE, *args, h.version)

        return await self.pool.run(work, tx=False) is not None

    async def expire_deliveries(self, webhook: str, created_before: float, reason: str) -> int:
        """Unleased pending deliveries of `webhook` older than the cut-off become dead."""

        async def work(conn: asyncpg.Connection) -> str:
            return str(await conn.execute(_EXPIRE, reason, webhook, created_before))

        status = await self.pool.run(work, tx=False)
        return int(status.rsplit(" ", 1)[-1])
