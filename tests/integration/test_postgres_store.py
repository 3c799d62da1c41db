"""What only the shared PostgreSQL store does: migrations under a lock, the database clock, leases between
replicas (each replica is a store instance with its own pool) and the lease-expiry races of SPEC §11.

The store contract itself runs on PostgreSQL through the `store` fixture (test_store_contract.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.integration.test_store_contract import jid, polled, reg
from tests.support import config
from tests.support.daemon import InProcessDaemon
from tests.support.eventually import eventually
from tests.support.ports import free_port
from tests.support.postgres import PG_URL, pg_schema
from watcher.cli.migrate import migrate_url
from watcher.devtools.clock import ManualClock
from watcher.devtools.simulate import Faults, Simulator
from watcher.errors import StoreError
from watcher.models import DeliveryState, DeliveryUpdate, Registration, Source
from watcher.store import open_store
from watcher.store.postgres import PostgresStore
from watcher.store.postgres.conn import migrations, parse_url

pytestmark = pytest.mark.postgres

Factory = Callable[..., Awaitable[PostgresStore]]
SKEWED = ManualClock(start=1_000_000_000.0)  # a replica whose clock is ~25 years behind the database's


@pytest.fixture
async def url() -> AsyncIterator[str]:
    """A store URL with a fresh schema, dropped afterwards."""
    async with pg_schema("pg") as u:
        yield u


@pytest.fixture
async def replica(url: str) -> AsyncIterator[Factory]:
    """Open shared stores ("replicas") on one schema; all closed at the end."""
    made: list[PostgresStore] = []

    async def make(**kw: object) -> PostgresStore:
        s = PostgresStore(url, **kw)  # type: ignore[arg-type]
        made.append(s)
        await s.open()
        return s

    yield make
    for s in made:
        await s.close()


async def db_now(url: str) -> float:
    """The database clock, in epoch seconds."""
    conn = await asyncpg.connect(parse_url(url).dsn, server_settings={"search_path": parse_url(url).schema})
    try:
        return float(await conn.fetchval("SELECT extract(epoch from now())::float8"))
    finally:
        await conn.close()


class TestMigrations:
    """Versioned migrations, applied once under an advisory lock."""

    async def test_concurrent_opens_migrate_once(self, url: str) -> None:
        """Three replicas opening a new schema together all succeed; each migration is recorded once."""
        stores = [PostgresStore(url) for _ in range(3)]
        await asyncio.gather(*(s.open() for s in stores))
        try:
            async with stores[0].pool.connection() as conn:
                rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in rows] == [v for v, _ in migrations()]
            assert all(s.schema_version == len(migrations()) for s in stores)
        finally:
            for s in stores:
                await s.close()

    async def test_the_watch_table_vacuums_early(self, url: str, replica: Factory) -> None:
        """The watch table's churn (two non-HOT updates per poll) gets its own autovacuum thresholds, so a
        million watches are vacuumed every few tens of thousands of dead rows, not every 200,000."""
        s = await replica()
        async with s.pool.connection() as conn:
            options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE oid = 'watches'::regclass")
        assert {"autovacuum_vacuum_scale_factor=0.01", "autovacuum_vacuum_threshold=10000"} <= set(options)

    async def test_migrate_command_is_idempotent(self, url: str) -> None:
        """`watcher migrate` applies once, then reports the schema up to date; no credentials in output."""
        first = await migrate_url(url)
        again = await migrate_url(url)
        assert "applied 1" in first and "already up to date" in again
        assert "postgres@" not in first

    async def test_newer_schema_is_refused(self, url: str, replica: Factory) -> None:
        """A database migrated by a newer watcher is refused with a one-line reason."""
        s = await replica()
        async with s.pool.connection() as conn:
            await conn.execute("INSERT INTO schema_migrations (version) VALUES (999)")
        with pytest.raises(StoreError, match="schema version 999, newer than") as exc:
            await PostgresStore(url).open()
        assert "\n" not in str(exc.value)


class TestUrls:
    """store.url parsing and connection errors: one line, no password."""

    def test_open_store_selects_postgres(self) -> None:
        """Both URL schemes select the PostgreSQL store, with our schema parameter split off."""
        s = open_store("postgres://u:pw@db.internal:6432/app?schema=team_a&sslmode=disable")
        assert isinstance(s, PostgresStore)
        assert s.target.schema == "team_a" and "schema=" not in s.target.dsn and "sslmode" in s.target.dsn
        assert "pw" not in repr(s.target)

    def test_bad_schema_name(self) -> None:
        """A schema name that would need quoting is refused before connecting."""
        with pytest.raises(StoreError, match="schema must be"):
            PostgresStore("postgresql://localhost/db?schema=a;drop")

    async def test_unreachable_names_host_not_password(self) -> None:
        """An unreachable server is one StoreError naming host and port, never the password."""
        s = PostgresStore("postgresql://u:s3cr3t-pw@127.0.0.1:1/db?connect_timeout=2")
        with pytest.raises(StoreError) as exc:
            await s.open()
        assert "127.0.0.1:1/db" in str(exc.value) and "s3cr3t" not in str(exc.value)


class TestDatabaseClock:
    """shared=True: leases and due times follow the database clock, not the replica's."""

    async def test_skewed_replica_claims_by_database_time(self, url: str, replica: Factory) -> None:
        """A replica 25 years behind registers, claims and schedules as if its clock were right."""
        s = await replica(clock=SKEWED)
        now = SKEWED.now()
        await s.register([reg(1)], now)
        (w,) = await s.claim_due(now, 10, 30.0)
        db = await db_now(url)
        assert abs(w.registered_at - db) < 60
        assert await s.claim_due(now + 10**6, 10, 30.0) == []  # the lease holds, whatever `now` says
        nxt = await s.next_due_at()
        assert nxt is not None and 25 < nxt - db < 35
        # The replica meant "in 10 s"; stored as the database's now + 10 s.
        assert await s.save_polls([polled(w, "active", now)]) == [True]
        saved = await s.get_watch(jid(1))
        assert saved is not None and 5 < saved.next_poll_at - db < 15
        assert await s.count_due(0.0) == 0

    async def test_restore_leaves_live_leases_alone(self, replica: Factory) -> None:
        """A starting replica spreads overdue watches but never takes a running replica's lease."""
        a, b = await replica(), await replica()
        await a.register([reg(1), reg(2)], 0.0)
        (held,) = await a.claim_due(0.0, 1, 30.0)
        assert await b.restore(time.time(), lambda _w: time.time() + 0.5) == 2
        other = await b.get_watch(jid(2) if held.job_id == jid(1) else jid(1))
        assert other is not None and other.lease == 0 and other.next_poll_at > time.time() - 5
        assert await a.save_polls([polled(held, "active", 0.0)]) == [True]


class TestLeases:
    """Replicas share the work: disjoint claims, fenced writes, takeover after expiry."""

    async def test_concurrent_claims_are_disjoint(self, replica: Factory) -> None:
        """Three replicas claiming in parallel hand out every due watch exactly once."""
        stores = [await replica() for _ in range(3)]
        await stores[0].register([reg(n) for n in range(300)], 0.0)

        async def drain(s: PostgresStore) -> list[str]:
            got: list[str] = []
            for _ in range(200):
                batch = await s.claim_due(0.0, 7, 60.0)
                if not batch and await s.count_due(0.0) == 0:
                    break
                got += [w.job_id for w in batch]
            return got

        results = await asyncio.gather(*(drain(s) for s in stores))
        claimed = [j for r in results for j in r]
        assert len(claimed) == len(set(claimed)) == 300
        assert all(results), "every replica got a share"

    async def test_stalled_replica_cannot_overwrite_newer_result(self, replica: Factory) -> None:
        """A stalls past its lease; B takes over and saves; A's late result is discarded, B's stands."""
        a, b = await replica(), await replica()
        await a.register([reg(1)], 0.0)
        (wa,) = await a.claim_due(0.0, 10, 0.3)
        assert await b.claim_due(0.0, 10, 0.3) == []  # the lease holds...
        await asyncio.sleep(0.5)  # ...until it expires: A is stalled (a GC pause, a slow upstream)
        (wb,) = await b.claim_due(0.0, 10, 30.0)
        assert wb.lease != wa.lease
        late = polled(wa, "failed", 1.0, updated="stale")
        assert await a.save_polls([late]) == [False]  # before B saved: B's lease fences A off
        assert await b.save_polls([polled(wb, "success", 2.0, updated="fresh")]) == [True]
        assert await a.save_polls([late]) == [False]  # and after
        final = await b.get_watch(jid(1))
        assert final is not None and (final.final, final.upstream_updated_at) == ("success", "fresh")
        assert [e.type for e in await b.events_for(jid(1))] == ["job.success"]

    async def test_stalled_delivery_lease_is_fenced(self, replica: Factory) -> None:
        """A delivery whose lease expired mid-send is claimed again; the stale outcome is discarded."""
        a, b = await replica(), await replica()
        await a.register([reg(1)], 0.0)
        (w,) = await a.claim_due(0.0, 10, 30.0)
        await a.save_polls([polled(w, "failed", 0.0)])
        (da,) = await a.claim_deliveries(0.0, 10, 0.3)
        assert await b.claim_deliveries(0.0, 10, 0.3) == []
        await asyncio.sleep(0.5)
        (db,) = await b.claim_deliveries(0.0, 10, 30.0)
        assert (db.id, db.event.id) == (da.id, da.event.id)  # same webhook-id on the retry
        done = DeliveryUpdate(DeliveryState.DELIVERED, 1, 0.0, None, delivered_at=0.0)
        assert await b.finish_delivery(db, done)
        dead = DeliveryUpdate(DeliveryState.DEAD, 1, 0.0, "HTTP 500")
        assert not await a.finish_delivery(da, dead)
        got = await b.get_delivery(da.id)
        assert got is not None and got.state is DeliveryState.DELIVERED

    async def test_deleted_while_claimed(self, replica: Factory) -> None:
        """A watch deleted on one replica while another polls it is not resurrected by the save."""
        a, b = await replica(), await replica()
        await a.register([reg(1)], 0.0)
        (w,) = await a.claim_due(0.0, 10, 30.0)
        assert await b.delete_watch(jid(1))
        assert await a.save_polls([polled(w, "success", 0.0)]) == [False]
        assert await a.get_watch(jid(1)) is None and await a.events_for(jid(1)) == []

    async def test_parallel_purges_do_not_deadlock(self, replica: Factory) -> None:
        """Every replica's housekeeping purges at once: one does the work, none fails."""
        stores = [await replica() for _ in range(3)]
        await stores[0].register([reg(n) for n in range(50)], 0.0)
        for w in await stores[0].claim_due(0.0, 50, 30.0):
            await stores[0].save_polls([replace(polled(w, "success", 0.0), events=())])
        purged = await asyncio.gather(*(s.purge_finished(time.time() + 10) for s in stores))
        assert sum(purged) == 50
        assert (await stores[0].list_watches()).watches == []


def test_default_test_url_is_loopback() -> None:
    """The tests only ever talk to a local server."""
    assert "127.0.0.1" in PG_URL or "localhost" in PG_URL


async def test_a_stopping_daemon_leaves_no_claim_behind(url: str, tmp_path: Path) -> None:
    """A graceful stop saves what its polls found and hands back what it had claimed ahead (`release`): no
    watch is left leased, so another replica does not wait for a lease to run out to poll it."""
    sim = Simulator(
        workspace_slug="acme", unknown_jobs="active", max_log=0, faults=Faults(slow=1.0, slow_s=0.2)
    )
    await sim.start()
    try:
        store = PostgresStore(url)
        await store.open()
        ids = [str(uuid.UUID(int=n + 1, version=4)) for n in range(200)]
        await store.register([Registration(j, "acme", Source.API) for j in ids], 0.0)
        await store.close()
        port = free_port()
        settings = config.settings(
            tmp_path,
            sim.url,
            port=port,
            sections={
                "upstream": {"max_concurrency": 8, "rate_limit_per_s": 100000.0},
                "polling": {
                    "initial_interval_s": 0.001, "multiplier": 1.0, "max_interval_s": 0.001, "jitter": 0.0
                },
                "store": {"url": url},
                "watchlist": None,
                "daemon": {"lease_s": 30.0, "shutdown_grace_s": 5.0, "state_dir": str(tmp_path)},
            },
        )  # fmt: skip
        daemon = InProcessDaemon(settings)
        await daemon.start()
        # Several rounds of 8 slow polls, with watches claimed ahead all along.
        await eventually(lambda: sim.stats()["requests"] >= 32, 20, "four rounds of polls")
        assert await daemon.stop() == 0
    finally:
        await sim.stop()
    conn = await asyncpg.connect(parse_url(url).dsn, server_settings={"search_path": parse_url(url).schema})
    try:
        leased, polls, latest, now = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE lease IS NOT NULL), sum(polls), max(next_poll_at),"
            " extract(epoch from now())::float8 FROM watches"
        )
    finally:
        await conn.close()
    assert polls >= 16  # the daemon did poll
    assert leased == 0
    assert latest < now + 5  # nothing parked at a lease expiry (now + 30 s)
