"""The SQLite store when its file cannot be written: outages are `StoreUnavailable` with SQLite's own words,
a failed save keeps everything for the retry (write-behind included), a lock held elsewhere is waited for
off the event loop, and the WAL stays small (issue 12 item 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.integration.test_sqlite_store import _quiet
from tests.integration.test_store_contract import jid, polled, reg
from tests.support.eventually import eventually
from tests.support.small_disk import SmallDisk
from watcher.errors import StoreUnavailable
from watcher.store.faults import StoreFault, fault_of
from watcher.store.sqlite import SQLiteStore
from watcher.store.sqlite.health import WAL_MAX_BYTES, wal_bytes

T0 = 1_700_000_000.0
LEASE = 30.0


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 4 MiB file system (or, where mounting is refused, a file-size limit on this very process)."""
    d = SmallDisk(tmp_path / "small")
    d.pid = os.getpid()
    try:
        yield d
    finally:
        with contextlib.suppress(OSError):
            d.free()
        d.close()


@pytest.fixture
async def make_store() -> AsyncIterator[type[SQLiteStore]]:
    """SQLite stores on given paths (deferring quiet polls for a minute), all closed at the end."""
    made: list[SQLiteStore] = []

    class Made(SQLiteStore):
        def __init__(self, path: Path) -> None:
            super().__init__(path, write_behind_s=60.0)
            made.append(self)

    yield Made
    for s in made:
        await s.close()


async def test_a_full_disk_is_unavailable_with_its_cause_and_the_save_can_be_retried(
    disk: SmallDisk, make_store: type[SQLiteStore]
) -> None:
    """On a full disk a save with an event fails as StoreUnavailable in SQLite's own words (never a failed
    ROLLBACK's "no transaction is active"); nothing of it is lost: the quiet poll it would have replaced
    stays deferred, and once there is room the same save writes the event and its delivery; the store
    then checks its file's integrity."""
    store = make_store(disk.path / "w.db")
    await store.open()
    await store.register([reg(1), reg(2)], T0)
    first = await store.claim_due(T0, 10, LEASE)
    assert await store.save_polls([_quiet(w, T0) for w in first]) == [True, True]  # deferred, in memory
    again = {w.job_id: w for w in await store.claim_due(T0 + 100, 10, LEASE)}
    batch = [polled(again[jid(1)], "success", T0 + 100), _quiet(again[jid(2)], T0 + 100)]
    with capture_logs() as logs:
        disk.fill()
        with pytest.raises(StoreUnavailable) as exc:
            await store.save_polls(batch)
        assert fault_of(exc.value) in (StoreFault.DISK_FULL, StoreFault.IO_ERROR), exc.value
        assert "rollback" not in str(exc.value) and str(disk.path) in str(exc.value)
        watch = await store.get_watch(jid(1))
        assert watch is not None and watch.polls == 1, "the deferred poll was lost with the failed save"
        disk.free()
        assert await store.save_polls(batch) == [True, True]
        await eventually(lambda: any(e["event"] == "store.integrity_check" for e in logs))
    (new,) = batch[0].events
    assert [e.id for e in await store.events_for(jid(1))] == [new.event.id]
    assert [d.event.id for d in await store.list_deliveries()] == [new.event.id]
    (check,) = [e for e in logs if e["event"] == "store.integrity_check"]
    assert check["result"] == "ok", check


async def test_a_lock_held_elsewhere_never_blocks_the_event_loop(
    tmp_path: Path, make_store: type[SQLiteStore]
) -> None:
    """While another process holds the write lock, a save waits for it between short attempts, the event
    loop stays free (no gap of more than a fraction of a second), and it fails as StoreUnavailable
    (locked); once the lock is gone, the same save works."""
    path = tmp_path / "w.db"
    store = make_store(path)
    await store.open()
    await store.register([reg(1)], T0)
    (w,) = await store.claim_due(T0, 10, LEASE)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            with pytest.raises(StoreUnavailable) as exc:
                await asyncio.wait_for(store.save_polls([polled(w, "success", T0)]), 10)
            assert fault_of(exc.value) is StoreFault.LOCKED and "locked" in str(exc.value)
            other.execute("ROLLBACK")
    finally:
        tick.cancel()
    # Blocked, the loop would wait out SQLite's 5 s lock timeout; a loaded machine adds well under 1 s.
    assert gaps and max(gaps) < 1.0, f"the event loop was blocked for {max(gaps):.3f}s"
    assert await store.save_polls([polled(w, "success", T0)]) == [True]


async def test_a_big_wal_is_truncated(tmp_path: Path, make_store: type[SQLiteStore]) -> None:
    """Writes that grow the WAL past its limit get it checkpointed and cut back to (near) nothing."""
    path = tmp_path / "w.db"
    store = make_store(path)
    await store.open()
    padding = {"pad": "x" * 4000}
    for start in range(0, 600, 100):
        await store.register([reg(n, labels=padding) for n in range(start, start + 100)], T0)
    await eventually(lambda: not store.connections.upkeep.running and wal_bytes(path) < WAL_MAX_BYTES)
    assert wal_bytes(path) < WAL_MAX_BYTES
