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
from tests.support.eventually import eventually
from watcher.clock import Clock
from watcher.devtools.clock import ManualClock
from watcher.errors import StoreError
from watcher.models import DeliveryState, DeliveryUpdate, NewEvent, SavedPoll, Watch
from watcher.store import open_store
from watcher.store.sqlite import SQLiteStore, migrations, sqlite_path
from watcher.store.sqlite.connection import CHECKPOINT_EVERY as _CHECKPOINT_EVERY
from watcher.store.sqlite.writebehind import WRITE_BEHIND_S

StoreFactory = Callable[..., SQLiteStore]


@pytest.fixture
async def make_store() -> AsyncIterator[StoreFactory]:
    """Build SQLite stores on given paths and close every one at the end."""
    made: list[SQLiteStore] = []

    def make(path: Path, write_behind_s: float = WRITE_BEHIND_S, clock: Clock | None = None) -> SQLiteStore:
        made.append(SQLiteStore(path, write_behind_s=write_behind_s, clock=clock))
        return made[-1]

    yield make
    for s in made:
        await s.close()


def _quiet(w: Watch, now: float) -> SavedPoll:
    """`w` after a poll that saw nothing new: no event, polling goes on."""
    return SavedPoll(
        replace(w, polls=w.polls + 1, streak=w.streak + 1, last_polled_at=now, next_poll_at=now + 1)
    )


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
    async with s.connections.read() as db, db.execute("PRAGMA foreign_keys") as cur:
        assert await cur.fetchone() == (1,)


async def test_newer_schema_is_refused(tmp_path: Path, make_store: StoreFactory) -> None:
    """A file written by a newer watcher is not touched; the error names the file and both versions."""
    path = tmp_path / "w.db"
    s = make_store(path)
    await s.open()
    await s.close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match=r"w\.db has schema version 99, newer than the \d+ "):
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
    copies its commits into the database file and lets the WAL start over, so it does not grow. (Every
    save is written here: no write-behind.)"""
    path = tmp_path / "w.db"
    s = make_store(path, write_behind_s=0)
    await s.open()
    await s.register([reg(n) for n in range(1, 11)], T0)
    now = T0
    wal_sizes = []
    for _cycle in range(4):
        for _ in range(_CHECKPOINT_EVERY):
            watches = await s.claim_due(now, 10, LEASE)
            assert len(watches) == 10
            saves = [_quiet(w, now) for w in watches]
            assert await s.save_polls(saves) == [True] * 10
            now += 1
        # The checkpoint runs on a worker thread: wait for it.
        await eventually(lambda: not s.connections.upkeep.running, 15, "the checkpoint done")
        wal_sizes.append((tmp_path / "w.db-wal").stat().st_size)
    # The database file alone, without its WAL, already holds the state as of the last checkpoint.
    alone = tmp_path / "alone.db"
    alone.write_bytes(path.read_bytes())
    ((least,),) = _query(alone, "SELECT min(polls) FROM watches")
    assert isinstance(least, int) and least == 4 * _CHECKPOINT_EVERY
    # Each cycle writes as much as the last: a WAL that starts over after each checkpoint stays the same size.
    assert wal_sizes[3] == wal_sizes[1], wal_sizes


# -- write-behind of quiet polls ----------------------------------------------------------------------------


def _on_disk(path: Path, job: str) -> tuple[object, ...]:
    """(polls, status, last_polled_at) of a watch as another process reading the file would see it."""
    ((row),) = _query(path, f"SELECT polls, status, last_polled_at FROM watches WHERE job_id = '{job}'")  # noqa: S608
    return row


async def _poll_quietly(s: SQLiteStore, times: int, now: float) -> float:
    for _ in range(times):
        (w,) = await s.claim_due(now, 10, LEASE)
        assert await s.save_polls([_quiet(w, now)]) == [True]
        now += 1
    return now


async def test_quiet_polls_are_written_behind_and_read_back_at_once(
    tmp_path: Path, make_store: StoreFactory
) -> None:
    """A poll without an event stays in memory (not in the file) while claims and the API read its state;
    `close` writes it."""
    path = tmp_path / "w.db"
    s = make_store(path, write_behind_s=3600)
    await s.open()
    await s.register([reg(1)], T0)
    (w,) = await s.claim_due(T0, 10, LEASE)
    assert await s.save_polls([polled(w, "active", T0)]) == [True]  # a transition: written at once
    assert _on_disk(path, jid(1)) == (1, "active", T0)
    now = await _poll_quietly(s, 3, T0 + 10)
    assert _on_disk(path, jid(1)) == (1, "active", T0)  # nothing written yet
    got = await s.get_watch(jid(1))
    assert got is not None and (got.polls, got.streak, got.last_polled_at) == (4, 3, now - 1)
    (listed,) = (await s.list_watches()).watches
    assert (listed.polls, listed.last_polled_at) == (4, now - 1)
    (claimed,) = await s.claim_due(now, 10, LEASE)
    assert claimed.polls == 4 and claimed.lease != 0
    await s.release([claimed])
    await s.close()
    assert _on_disk(path, jid(1)) == (4, "active", now - 1)
    s2 = make_store(path)
    await s2.open()
    assert await s2.restore(now, lambda w: now) == 1
    again = await s2.get_watch(jid(1))
    assert again is not None and again.polls == 4


async def test_write_behind_writes_within_its_window(tmp_path: Path, make_store: StoreFactory) -> None:
    """Deferred polls are written by a later save once the oldest has waited `write_behind_s`, even when
    the same watches keep being polled (their first unwritten poll counts, not their latest)."""
    path = tmp_path / "w.db"
    clock = ManualClock()
    s = make_store(path, write_behind_s=10.0, clock=clock)
    await s.open()
    await s.register([reg(1)], T0)
    now = await _poll_quietly(s, 2, T0)
    await clock.advance(9.0)
    now = await _poll_quietly(s, 1, now)
    assert _on_disk(path, jid(1))[0] == 0  # the oldest has waited 9 s of 10
    await clock.advance(1.0)
    now = await _poll_quietly(s, 1, now)  # this save writes the deferred state, its own included
    assert _on_disk(path, jid(1))[0] == 4
    now = await _poll_quietly(s, 1, now)
    assert _on_disk(path, jid(1))[0] == 4  # a new window starts


async def test_a_crash_loses_only_deferred_polling_state(tmp_path: Path, make_store: StoreFactory) -> None:
    """Files copied while the store is open are what a SIGKILL leaves: every transition and its event is
    there; only the quiet polls since are missing, and the watch is polled on from its last written state."""
    path = tmp_path / "w.db"
    s = make_store(path, write_behind_s=3600)
    await s.open()
    await s.register([reg(1), reg(2)], T0)
    first = await s.claim_due(T0, 10, LEASE)
    assert await s.save_polls([polled(w, "active", T0) for w in first]) == [True, True]
    now = T0 + 10
    quiet = await s.claim_due(now, 10, LEASE)
    assert await s.save_polls([_quiet(w, now) for w in quiet]) == [True, True]
    by_id = {w.job_id: w for w in await s.claim_due(now + 10, 10, LEASE)}
    w1 = by_id[jid(1)]
    assert w1.polls == 2
    done = polled(w1, "success", now + 10)  # the deferred state of job 1 is superseded by its transition
    assert await s.save_polls([done]) == [True]
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for suffix in ("", "-wal"):
        (crashed / f"w.db{suffix}").write_bytes((tmp_path / f"w.db{suffix}").read_bytes())
    s2 = make_store(crashed / "w.db")
    await s2.open()
    assert await s2.restore(now, lambda w: now) == 1  # job 2 polls on; job 1 finished
    j1, j2 = await s2.get_watch(jid(1)), await s2.get_watch(jid(2))
    assert j1 is not None and (j1.final, j1.polls) == ("success", 3)
    assert j2 is not None and (j2.status, j2.polls) == ("active", 1)  # its quiet poll was not written
    assert {e.type for e in await s2.events_for(jid(1))} == {"job.active", "job.success"}


async def test_a_deleted_watch_is_not_written_back(tmp_path: Path, make_store: StoreFactory) -> None:
    """Deleting a watch drops its deferred state: closing the store does not bring it back."""
    path = tmp_path / "w.db"
    s = make_store(path, write_behind_s=3600)
    await s.open()
    await s.register([reg(1), reg(2)], T0)
    now = T0
    ws = await s.claim_due(now, 10, LEASE)
    assert await s.save_polls([_quiet(w, now) for w in ws]) == [True, True]
    assert await s.delete_watch(jid(1))
    assert await s.get_watch(jid(1)) is None
    assert [w.job_id for w in await s.claim_due(now + 5, 10, LEASE)] == [jid(2)]
    await s.close()
    assert _query(path, "SELECT job_id, polls FROM watches") == [(jid(2), 1)]


async def test_a_failed_write_keeps_the_deferred_state(tmp_path: Path, make_store: StoreFactory) -> None:
    """When the save that writes deferred polls cannot write at all (another process holds the write lock),
    they stay deferred and a later save writes them; the poll count never goes back."""
    path = tmp_path / "w.db"
    clock = ManualClock()
    s = make_store(path, write_behind_s=10.0, clock=clock)
    await s.open()
    await s.register([reg(1)], T0)
    now = await _poll_quietly(s, 2, T0)
    await clock.advance(10.0)
    assert s.connections.hot is not None
    s.connections.hot.execute("PRAGMA busy_timeout = 0")  # fail at once instead of after 5 s
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        (w,) = await s.claim_due(now, 10, LEASE)
        with pytest.raises(StoreError, match="locked"):
            await s.save_polls([_quiet(w, now)])
        other.execute("ROLLBACK")
    got = await s.get_watch(jid(1))
    assert got is not None and got.polls == 3
    assert _on_disk(path, jid(1))[0] == 0
    now += LEASE + 1  # the failed save's claim has expired
    (w,) = await s.claim_due(now, 10, LEASE)
    assert w.polls == 3
    assert await s.save_polls([_quiet(w, now)]) == [True]
    assert _on_disk(path, jid(1))[0] == 4


async def test_a_refused_deferred_row_fails_nothing_else(tmp_path: Path, make_store: StoreFactory) -> None:
    """A deferred quiet poll whose row the database refuses (its data, not the database being out) does not
    fail the save that carries it, nor any later one: that save's own rows and the other deferred rows are
    written, and only the refused row's deferred polling state is dropped (SPEC §16)."""
    path = tmp_path / "w.db"
    clock = ManualClock()
    s = make_store(path, write_behind_s=10.0, clock=clock)
    await s.open()
    await s.register([reg(1), reg(2), reg(3)], T0)
    claimed = await s.claim_due(T0, 10, LEASE)
    assert await s.save_polls([_quiet(w, T0) for w in claimed]) == [True, True, True]
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute(
            f"CREATE TRIGGER refuse BEFORE UPDATE ON watches WHEN NEW.job_id = '{jid(2)}'"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    await clock.advance(10.0)  # the deferred polls are due for writing with the next save
    now = T0 + 5
    w3 = next(w for w in await s.claim_due(now, 10, LEASE) if w.job_id == jid(3))
    assert await s.save_polls([polled(w3, "active", now)]) == [True]  # an event: written at once
    assert _on_disk(path, jid(3))[:2] == (2, "active")
    assert _on_disk(path, jid(1))[0] == 1  # the other deferred row was written
    assert _on_disk(path, jid(2))[0] == 0
    refused = await s.get_watch(jid(2))
    assert refused is not None and refused.polls == 0  # its deferred state was dropped, nothing else
    assert await s.save_polls([]) == []  # and nothing is left to fail a later save
