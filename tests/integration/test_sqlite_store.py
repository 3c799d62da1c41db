"""What only the SQLite store has: a file that outlives the process, migrations, pragmas, open errors."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from tests.integration.test_store_contract import LEASE, T0, jid, polled, reg
from watcher.errors import StoreError
from watcher.models import DeliveryState, DeliveryUpdate, NewEvent, SavedPoll
from watcher.store import open_store
from watcher.store.sqlite import _CHECKPOINT_EVERY, SQLiteStore, migrations, sqlite_path

StoreFactory = Callable[[Path], SQLiteStore]


@pytest.fixture
async def make_store() -> AsyncIterator[StoreFactory]:
    """Build SQLite stores on given paths and close every one at the end."""
    made: list[SQLiteStore] = []

    def make(path: Path) -> SQLiteStore:
        made.append(SQLiteStore(path))
        return made[-1]

    yield make
    for s in made:
        await s.close()


def _query(path: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return list(db.execute(sql).fetchall())


async def test_reopen_restores_watches_and_deliveries(tmp_path: Path, make_store: StoreFactory) -> None:
    """After a restart every unfinished watch is due again and every undelivered delivery is claimable."""
    path = tmp_path / "w.db"
    s = make_store(path)
    await s.open()
    await s.register([reg(1), reg(2), reg(3)], T0)
    w1, w2, w3 = await s.claim_due(T0, 3, LEASE)
    await s.save_polls([polled(w1, "active", T0), polled(w2, "success", T0), polled(w3, "queued", T0)])
    d1, d2, d3 = await s.claim_deliveries(T0, 10, LEASE)
    assert await s.finish_delivery(d1, DeliveryUpdate(DeliveryState.DELIVERED, 1, T0, None, T0))
    assert await s.finish_delivery(d2, DeliveryUpdate(DeliveryState.PENDING, 1, T0 + 5, "HTTP 503"))
    # d3 stays claimed, as if the process died mid-request.
    await s.close()

    s2 = make_store(path)
    await s2.open()
    seen: list[str] = []

    def first_due(w: object) -> float:
        seen.append(getattr(w, "job_id", ""))
        return T0 + 1

    assert await s2.restore(T0 + 1, first_due) == 2
    assert sorted(seen) == [jid(1), jid(3)]
    assert [w.job_id for w in await s2.claim_due(T0 + 1, 10, LEASE)] == [jid(1), jid(3)]
    # The claimed-but-unfinished delivery is claimable at once, not after its lease.
    got = await s2.claim_deliveries(T0 + 5, 10, LEASE)
    assert sorted((d.id, d.attempts) for d in got) == [(d2.id, 1), (d3.id, 0)]
    restored = await s2.get_watch(jid(3))
    assert restored is not None and restored.status == "queued" and restored.next_poll_at == T0 + 1


async def test_migrations_versioned_and_idempotent(tmp_path: Path, make_store: StoreFactory) -> None:
    """A new file gets every migration once; reopening applies nothing and keeps the data."""
    path = tmp_path / "nested" / "dir" / "w.db"
    s = make_store(path)
    await s.open()
    await s.register([reg(1)], T0)
    await s.close()
    latest = migrations()[-1][0]
    assert _query(path, "PRAGMA user_version") == [(latest,)]
    s2 = make_store(path)
    await s2.open()
    await s2.open()  # opening an open store is a no-op
    assert await s2.get_watch(jid(1)) is not None
    await s2.close()
    await s2.close()  # safe twice
    assert _query(path, "PRAGMA user_version") == [(latest,)]
    tables = {r[0] for r in _query(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"watches", "events", "deliveries"} <= tables


async def test_wal_mode_and_foreign_keys(tmp_path: Path, make_store: StoreFactory) -> None:
    """The file is in WAL mode and the connection enforces foreign keys."""
    s = make_store(tmp_path / "w.db")
    await s.open()
    assert _query(tmp_path / "w.db", "PRAGMA journal_mode") == [("wal",)]
    assert await s.ping()
    async with s._read() as db, db.execute("PRAGMA foreign_keys") as cur:
        assert await cur.fetchone() == (1,)


async def test_newer_schema_is_refused(tmp_path: Path, make_store: StoreFactory) -> None:
    """A file written by a newer watcher is not touched; the error names the file and both versions."""
    path = tmp_path / "w.db"
    s = make_store(path)
    await s.open()
    await s.close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match=r"w\.db has schema version 99, newer than the 1"):
        await make_store(path).open()
    assert _query(path, "PRAGMA user_version") == [(99,)]


@pytest.mark.parametrize("kind", ["parent_is_file", "not_a_database"])
async def test_unopenable_file_names_the_path(tmp_path: Path, make_store: StoreFactory, kind: str) -> None:
    """A path that cannot hold a database gives a one-line StoreError naming it."""
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"this is not a database, it is a text file " * 100)
    path = blocker / "w.db" if kind == "parent_is_file" else blocker
    s = make_store(path)
    with pytest.raises(StoreError, match=str(path)):
        await s.open()
    assert not await s.ping()
    with pytest.raises(StoreError, match="not open"):
        await s.get_watch(jid(1))


async def test_failed_save_writes_nothing(tmp_path: Path, make_store: StoreFactory) -> None:
    """An error half-way through a batch rolls the whole batch back and keeps the claims."""
    s = make_store(tmp_path / "w.db")
    await s.open()
    await s.register([reg(1), reg(2)], T0)
    w1, w2 = await s.claim_due(T0, 2, LEASE)
    good = polled(w1, "active", T0)
    bad_event = replace(polled(w2, "active", T0).events[0].event, payload={"x": {1, 2}})  # not JSON
    with pytest.raises(TypeError):
        await s.save_polls(
            [good, SavedPoll(polled(w2, "active", T0).watch, (NewEvent(bad_event, ("ops",)),))]
        )
    w = await s.get_watch(jid(1))
    assert w is not None and w.status is None
    assert await s.events_for(jid(1)) == []
    assert await s.save_polls([good]) == [True]  # the claim survived the failed batch


async def test_concurrent_callers_do_not_interleave(tmp_path: Path, make_store: StoreFactory) -> None:
    """Many coroutines writing at once each get their own transaction."""
    s = make_store(tmp_path / "w.db")
    await s.open()
    await asyncio.gather(*(s.register([reg(n), reg(n + 1000)], T0) for n in range(50)))
    claimed = await s.claim_due(T0, 1000, LEASE)
    assert len(claimed) == 100
    results = await asyncio.gather(*(s.save_polls([polled(w, "active", T0)]) for w in claimed))
    assert results == [[True]] * 100
    assert len(await s.claim_deliveries(T0, 1000, LEASE)) == 100


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relative.db", Path("relative.db")),
        ("sqlite:///data/w.db", Path("data/w.db")),
        ("sqlite:////var/lib/watcher/w.db", Path("/var/lib/watcher/w.db")),
    ],
)
def test_sqlite_path(url: str, path: Path) -> None:
    """Three slashes then a relative path, four for an absolute one."""
    assert sqlite_path(url) == path


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite://host/w.db", "sqlite:w.db", "sqlite:///w.db?x=1"]
)
def test_sqlite_path_rejects_junk(url: str) -> None:
    """Anything else is a StoreError naming the key."""
    with pytest.raises(StoreError, match=r"store\.url"):
        sqlite_path(url)


def test_open_store_picks_sqlite(tmp_path: Path) -> None:
    """open_store builds an SQLiteStore on the URL's path."""
    s = open_store(f"sqlite:///{tmp_path}/w.db")
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "w.db"


async def test_saves_reach_the_database_file_through_checkpoints(
    tmp_path: Path, make_store: StoreFactory
) -> None:
    """The scheduler's connection never checkpoints on the event loop; the store's background checkpoint
    copies its commits into the database file and lets the WAL start over, so it does not grow."""
    path = tmp_path / "w.db"
    s = make_store(path)
    await s.open()
    await s.register([reg(n) for n in range(1, 11)], T0)
    now = T0
    wal_sizes = []
    for _cycle in range(4):
        for _ in range(_CHECKPOINT_EVERY):
            watches = await s.claim_due(now, 10, LEASE)
            assert len(watches) == 10
            saves = [SavedPoll(replace(w, polls=w.polls + 1, next_poll_at=now + 1)) for w in watches]
            assert await s.save_polls(saves) == [True] * 10
            now += 1
        for _ in range(500):  # the checkpoint runs on a worker thread: give it a moment
            if s._checkpointing is None:
                break
            await asyncio.sleep(0.01)
        wal_sizes.append((tmp_path / "w.db-wal").stat().st_size)
    # The database file alone, without its WAL, already holds the state as of the last checkpoint.
    alone = tmp_path / "alone.db"
    alone.write_bytes(path.read_bytes())
    ((least,),) = _query(alone, "SELECT min(polls) FROM watches")
    assert isinstance(least, int) and least == 4 * _CHECKPOINT_EVERY
    # Each cycle writes as much as the last: a WAL that starts over after each checkpoint stays the same size.
    assert wal_sizes[3] == wal_sizes[1], wal_sizes
