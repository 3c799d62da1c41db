"""The store contract for quarantine (SPEC §16): counting failures, leaving claims, listing, releasing."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from tests.integration.test_store_contract import LEASE, T0, claim_one, jid, polled, reg
from tests.support.postgres import PG_URL, pg_schema
from watcher.models import QUARANTINED
from watcher.store.base import FailureNoted, Store
from watcher.store.postgres import PostgresStore
from watcher.store.postgres.conn import migrations as pg_migrations
from watcher.store.sqlite import SQLiteStore
from watcher.store.sqlite import migrations as sqlite_migrations

LIMIT = 3


async def fail(store: Store, now: float, reason: str = "TypeError: boom") -> FailureNoted:
    """Claim the one due watch and note one failure of its handling, due again 5 s later."""
    w = await claim_one(store, now)
    return await store.note_failure(w, reason, now, now + 5, LIMIT)


class TestQuarantine:
    """note_failure counts per watch; at the limit the watch leaves every claim until released."""

    async def test_failures_below_the_limit_reschedule(self, store: Store) -> None:
        """Each failure is counted and the watch is due again at `retry_at`, with its claim over."""
        await store.register([reg(1)], T0)
        assert await fail(store, T0) == FailureNoted(True, 1, quarantined=False)
        w = await store.get_watch(jid(1))
        assert w is not None
        assert (w.failures, w.quarantined_at, w.quarantine_reason) == (1, None, "TypeError: boom")
        assert w.list_status == "unknown"
        assert await store.claim_due(T0 + 4, 10, LEASE) == []
        assert [x.job_id for x in await store.claim_due(T0 + 5, 10, LEASE)] == [jid(1)]

    async def test_quarantined_at_the_limit(self, store: Store) -> None:
        """The third failure quarantines: never claimed, not counted as watched, listed as quarantined."""
        await store.register([reg(1), reg(2)], T0)
        for i in range(LIMIT):
            now = T0 + 100 * i  # past every earlier lease and retry: both jobs are claimed each time
            claimed = {w.job_id: w for w in await store.claim_due(now, 10, LEASE)}
            noted = await store.note_failure(claimed[jid(1)], f"boom {i}", now, now + 5, LIMIT)
            assert noted == FailureNoted(True, i + 1, quarantined=i + 1 == LIMIT)
        later = T0 + 10_000
        assert [w.job_id for w in await store.claim_due(later, 10, LEASE)] == [jid(2)]
        assert await store.next_due_at() is not None  # job 2 holds a lease; job 1 counts nowhere
        q = await store.get_watch(jid(1))
        assert q is not None and q.quarantined_at is not None
        assert (q.failures, q.quarantine_reason, q.list_status) == (LIMIT, "boom 2", QUARANTINED)
        page = await store.list_watches(status=QUARANTINED)
        assert [w.job_id for w in page.watches] == [jid(1)]
        counts = await store.counts()
        assert counts.quarantined == 1
        assert sum(counts.watched_by_status.values()) == 1  # job 2 only
        assert (await store.watch_counts()).get(QUARANTINED) == 1

    async def test_lost_lease_writes_nothing(self, store: Store) -> None:
        """A failure noted with a lease that moved on is not counted."""
        await store.register([reg(1)], T0)
        old = await claim_one(store, T0)
        await claim_one(store, T0 + LEASE)  # the lease expired and the watch was claimed again
        assert await store.note_failure(old, "late", T0 + LEASE, T0 + LEASE + 5, LIMIT) == FailureNoted(
            kept=False
        )
        w = await store.get_watch(jid(1))
        assert w is not None and w.failures == 0

    async def test_release_makes_it_due_and_resets(self, store: Store) -> None:
        """Release clears quarantine and count; the watch is claimable at once; a second release is False."""
        await store.register([reg(1)], T0)
        for i in range(LIMIT):
            await fail(store, T0 + 100 * i)
        assert await store.claim_due(T0 + 1000, 10, LEASE) == []
        assert await store.release_quarantine(jid(1), T0 + 1000) is True
        assert await store.release_quarantine(jid(1), T0 + 1000) is False
        assert await store.release_quarantine(jid(99), T0 + 1000) is False
        w = await claim_one(store, T0 + 1000)
        assert (w.failures, w.quarantined_at) == (0, None)
        assert await store.save_polls([polled(w, "success", T0 + 1001)]) == [True]
        assert (await store.counts()).quarantined == 0

    async def test_saves_keep_the_failure_count(self, store: Store) -> None:
        """A successful poll after a failure does not reset the count: failures add up over a watch's life."""
        await store.register([reg(1)], T0)
        await fail(store, T0)
        w = await claim_one(store, T0 + 5)
        assert await store.save_polls([polled(w, "active", T0 + 5)]) == [True]
        after = await store.get_watch(jid(1))
        assert after is not None and after.failures == 1


async def test_quarantine_survives_a_restart(tmp_path: Path) -> None:
    """After a restart SQLite's due index leaves a quarantined watch out (it is rebuilt from the table)."""
    path = tmp_path / "w.db"
    store = SQLiteStore(path)
    await store.open()
    await store.register([reg(1), reg(2)], T0)
    for i in range(LIMIT):
        now = T0 + 100 * i
        claimed = {w.job_id: w for w in await store.claim_due(now, 10, LEASE)}
        await store.note_failure(claimed[jid(1)], "boom", now, now + 5, LIMIT)
        if jid(2) in claimed:
            await store.release([claimed[jid(2)]])
    await store.close()
    again = SQLiteStore(path)
    await again.open()
    try:
        assert await again.restore(T0 + 1000, lambda w: T0 + 1000) == 1
        assert [w.job_id for w in await again.claim_due(T0 + 1000, 10, LEASE)] == [jid(2)]
        assert (await again.counts()).quarantined == 1
    finally:
        await again.close()


async def test_a_version_1_sqlite_file_is_migrated_in_place(tmp_path: Path) -> None:
    """An existing file of schema 1 gains the quarantine columns, its watches kept (an additive migration)."""
    path = tmp_path / "v1.db"
    ((_, v1),) = [m for m in sqlite_migrations() if m[0] == 1]
    with closing(sqlite3.connect(path)) as db:
        db.executescript(v1)
        db.execute(
            "INSERT INTO watches (job_id, workspace, sources, registered_at, next_poll_at)"
            " VALUES (?, 'acme', 2, ?, ?)",
            (jid(1), T0, T0),
        )
        db.execute("PRAGMA user_version = 1")
        db.commit()
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.restore(T0, lambda w: T0) == 1
        w = await claim_one(store, T0)
        assert (w.job_id, w.failures, w.quarantined_at) == (jid(1), 0, None)
        assert (await store.note_failure(w, "boom", T0, T0 + 1, LIMIT)).failures == 1
    finally:
        await store.close()


async def test_a_version_1_postgres_schema_is_migrated_in_place() -> None:
    """The same on PostgreSQL: schema 1 with a watch, then a version-2 store opens it and uses it."""
    async with pg_schema("v1") as url:
        schema = url.rsplit("schema=", 1)[1]
        ((_, v1),) = [m for m in pg_migrations() if m[0] == 1]
        conn = await asyncpg.connect(PG_URL, timeout=10)
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"; SET search_path = "{schema}"')
            await conn.execute(v1)
            await conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now()); INSERT INTO schema_migrations VALUES (1)"
            )
            await conn.execute(
                "INSERT INTO watches (job_id, workspace, sources, registered_at, next_poll_at)"
                " VALUES ($1, 'acme', 2, $2, $2)",
                jid(1),
                T0,
            )
        finally:
            await conn.close()
        store = PostgresStore(url, shared=False)
        await store.open()
        try:
            assert store.schema_version == len(pg_migrations())  # the latest, whatever it is
            w = await claim_one(store, T0)
            assert (w.job_id, w.failures, w.quarantined_at) == (jid(1), 0, None)
            assert (await store.note_failure(w, "boom", T0, T0 + 1, 1)).quarantined
            assert (await store.counts()).quarantined == 1
        finally:
            await store.close()
