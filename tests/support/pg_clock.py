"""A shared (production-mode) `PostgresStore` on a fake database clock, for the store contract.

In shared mode the store takes its times from the database (`now()`), not from the `now` arguments, so a
suite that moves time by passing `now` needs the database's clock to follow it. This store keeps a fake
`now()` in its test schema: a one-row table and a function `now()` that reads it, found before
`pg_catalog.now()` because its connections put the schema first in their search path. Every call that
takes a `now` first sets that clock (and the store's own, for the offsets it computes) to it; everything
else is the production store, statements and all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence

import asyncpg  # type: ignore[import-untyped]

from watcher.models import Delivery, Registration, Source, Watch
from watcher.store.base import FailureNoted, GroupClaim, RegisterResult, SyncResult
from watcher.store.postgres import PostgresStore
from watcher.store.postgres.conn import PgPool, dumps, migrate


class _Clock:
    """The time the database's fake `now()` says, as the store's clock."""

    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("the contract never sleeps")


async def _json_codecs(conn: asyncpg.Connection) -> None:
    """As the production pool does: JSON columns come and go as Python objects."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=dumps, decoder=json.loads, schema="pg_catalog")


class _FakeNowPool(PgPool):
    """The production pool, but with `"<schema>", pg_catalog` as the search path (pg_catalog is otherwise
    searched first), so that the schema's `now()` stands in for the database clock."""

    async def open(self) -> int:
        schema = self.target.schema
        assert schema is not None
        setup = await asyncpg.connect(self.target.dsn)
        try:
            await setup.execute(
                f"""
                CREATE SCHEMA IF NOT EXISTS "{schema}";
                CREATE TABLE "{schema}".fake_clock (t float8 NOT NULL);
                INSERT INTO "{schema}".fake_clock VALUES (0);
                CREATE FUNCTION "{schema}".now() RETURNS timestamptz LANGUAGE sql STABLE
                    AS $$ SELECT pg_catalog.to_timestamp(t) FROM "{schema}".fake_clock $$;
                """  # noqa: S608  # the schema name is the test's own, checked by parse_url
            )
        finally:
            await setup.close()
        pool = await asyncpg.create_pool(
            self.target.dsn,
            min_size=1,
            max_size=4,
            server_settings={"search_path": f'"{schema}", pg_catalog'},
            init=_json_codecs,
        )
        try:
            version, _ = await migrate(pool, self.target)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        return version


class FakeNowPostgresStore(PostgresStore):
    """`PostgresStore(url)` (shared) whose database clock is set to each call's `now`."""

    def __init__(self, url: str) -> None:
        self._fake = _Clock(0.0)
        super().__init__(url, shared=True, clock=self._fake)
        self.pool = _FakeNowPool(self.target, self._fake)

    async def at(self, now: float) -> None:
        """Set the database's (and the store's) clock to `now`."""
        self._fake.t = now
        await self.pool.run(lambda c: c.execute("UPDATE fake_clock SET t = $1", now))

    async def restore(self, now: float, first_due: Callable[[Watch], float]) -> int:
        await self.at(now)
        return await super().restore(now, first_due)

    async def register(self, regs: Sequence[Registration], now: float) -> list[RegisterResult]:
        await self.at(now)
        return await super().register(regs, now)

    async def sync_source_range(
        self,
        source: Source,
        regs: Sequence[Registration],
        lo: str | None,
        hi: str | None,
        now: float,
        *,
        remove: bool = True,
    ) -> SyncResult:
        await self.at(now)
        return await super().sync_source_range(source, regs, lo, hi, now, remove=remove)

    async def claim_due(self, now: float, limit: int, lease_s: float) -> list[Watch]:
        await self.at(now)
        return await super().claim_due(now, limit, lease_s)

    async def count_due(self, now: float) -> int:
        await self.at(now)
        return await super().count_due(now)

    async def note_failure(
        self, watch: Watch, reason: str, now: float, retry_at: float, quarantine_after: int
    ) -> FailureNoted:
        await self.at(now)
        return await super().note_failure(watch, reason, now, retry_at, quarantine_after)

    async def release_quarantine(self, job_id: str, now: float) -> bool:
        await self.at(now)
        return await super().release_quarantine(job_id, now)

    async def claim_deliveries(
        self, now: float, limit: int, lease_s: float, exclude: Collection[str] = ()
    ) -> list[Delivery]:
        await self.at(now)
        return await super().claim_deliveries(now, limit, lease_s, exclude)

    async def claim_group(
        self, webhook: str, now: float, window_s: float, limit: int, lease_s: float
    ) -> GroupClaim:
        await self.at(now)
        return await super().claim_group(webhook, now, window_s, limit, lease_s)

    async def retry_delivery(self, delivery_id: int, now: float) -> bool:
        await self.at(now)
        return await super().retry_delivery(delivery_id, now)
