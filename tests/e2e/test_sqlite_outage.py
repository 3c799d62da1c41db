"""A full disk, a read-only state directory or a lock held by another process never kills `watcher run` on
SQLite (SPEC §16, issue 12 item 4).

The state directory is a small file system (tests/support/small_disk.py: a tmpfs where this process may
mount, else a file-size limit on the daemon); the lock is a second sqlite3 connection holding BEGIN
EXCLUSIVE. While writes fail: /readyz 503, `watcher_ready` 0, no exit; afterwards everything resumes by
itself and every event is delivered.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Receiver, Sim, write_config
from tests.e2e.outage_support import (
    PipedDaemon,
    active_jobs,
    all_polled,
    assert_all_json,
    end_jobs,
    every_end_delivered,
    metric_is,
    probe,
    readyz_is,
    scripted_jobs,
    store_retried,
    until,
)
from tests.support.ports import free_port
from tests.support.small_disk import SmallDisk
from watcher.store.sqlite.health import WAL_MAX_BYTES

pytestmark = pytest.mark.slow

MakeDaemon = Callable[..., PipedDaemon]


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """The state directory on a 4 MiB file system."""
    d = SmallDisk(tmp_path / "state")
    yield d
    d.close()


@pytest.fixture
async def make_daemon(tmp_path: Path, sim: Sim, receiver: Receiver) -> AsyncIterator[MakeDaemon]:
    """Daemons on the e2e config (state in tmp_path/state); every one still running is killed at the end."""
    made: list[PipedDaemon] = []

    def make(preexec: Callable[[], None] | None = None, **overrides: Any) -> PipedDaemon:
        port = free_port()
        config = write_config(tmp_path, sim, receiver, port, **overrides)
        d = PipedDaemon(config, tmp_path / f"daemon-{len(made)}.log", port, preexec)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.alive():
            d.kill()


def event_names(daemon: PipedDaemon) -> list[str]:
    return [e["event"] for e in assert_all_json(daemon.log_path)]


async def test_disk_fills_while_jobs_finish(
    tmp_path: Path, sim: Sim, receiver: Receiver, disk: SmallDisk, make_daemon: MakeDaemon
) -> None:
    """The disk fills, then jobs finish: not ready, no exit, polling stops; once space is freed the daemon
    resumes by itself, delivers every event and checks the file's integrity."""
    watched = await active_jobs(sim, 20)
    (tmp_path / "watchlist.txt").write_text("\n".join(watched) + "\n")
    daemon = make_daemon(disk.preexec())
    daemon.start()
    assert daemon.proc is not None
    disk.pid = daemon.proc.pid
    await daemon.wait_ready()
    await all_polled(sim, watched)
    disk.fill()
    jobs = await end_jobs(sim, watched)
    await until(lambda: readyz_is(daemon.api, 503), 20, f"/readyz 503 with a full disk ({disk.how})")
    await until(lambda: metric_is(daemon.api, "watcher_ready", 0.0), 10, "watcher_ready 0 with a full disk")
    status, body, _ = await probe(daemon.api, "/readyz")
    assert status == 503 and body["store"]["kind"] in ("disk_full", "io_error"), body
    await store_retried(daemon.api, 2)  # polls in flight when the disk filled are over by now
    polls = len(await sim.requests())
    await store_retried(daemon.api, 4)
    assert len(await sim.requests()) == polls, "polled while nothing could be saved"
    assert daemon.alive(), daemon.log_text()[-3000:]

    disk.free()
    await until(lambda: readyz_is(daemon.api, 200), 30, "/readyz 200 once space is freed")
    await every_end_delivered(receiver, jobs, timeout=40)

    async def checked() -> bool:
        return "store.integrity_check" in event_names(daemon)

    await until(checked, 20, "an integrity check after the recovery")
    assert daemon.stop() == 0
    events = assert_all_json(daemon.log_path)
    (check,) = [e for e in events if e["event"] == "store.integrity_check"]
    assert check["result"] == "ok", check
    outage = next(e for e in events if e["event"] == "store.unavailable")
    assert "rollback" not in outage["reason"], outage  # the real cause, not the failed ROLLBACK's
    assert any(e["event"] == "store.recovered" for e in events)


async def test_start_with_a_full_disk(
    tmp_path: Path, sim: Sim, receiver: Receiver, disk: SmallDisk, make_daemon: MakeDaemon
) -> None:
    """Started on a full disk, the daemon answers /healthz, says 503 on /readyz, and starts by itself once
    there is room."""
    jobs = await scripted_jobs(sim, 3, first_s=1.0, spread_s=1.0)
    (tmp_path / "watchlist.txt").write_text("\n".join(jobs) + "\n")
    disk.fill()
    daemon = make_daemon(disk.preexec())
    daemon.start()
    assert daemon.proc is not None
    disk.pid = daemon.proc.pid
    await until(lambda: readyz_is(daemon.api, 503), 20, f"/readyz 503 on a full disk ({disk.how})")
    assert (await probe(daemon.api, "/healthz"))[0] == 200
    await store_retried(daemon.api, 2)  # it keeps trying, and stays up
    assert daemon.alive(), daemon.log_text()[-3000:]
    disk.free()
    await until(lambda: readyz_is(daemon.api, 200), 30, "/readyz 200 once there is room")
    await every_end_delivered(receiver, jobs, timeout=30)
    assert daemon.stop() == 0
    names = event_names(daemon)
    assert names.index("api.listening") < names.index("store.unavailable") < names.index("daemon.started")


async def test_start_with_a_read_only_state_directory(
    tmp_path: Path, sim: Sim, receiver: Receiver, disk: SmallDisk, make_daemon: MakeDaemon
) -> None:
    """A read-only state directory at start-up: HTTP up, /readyz 503 naming the cause; writable again, the
    daemon starts by itself."""
    if not disk.read_only(True):
        pytest.skip("cannot make a directory read-only here: root without permission to mount")
    jobs = await scripted_jobs(sim, 3, first_s=1.0, spread_s=1.0)
    (tmp_path / "watchlist.txt").write_text("\n".join(jobs) + "\n")
    daemon = make_daemon()
    daemon.start()
    await until(lambda: readyz_is(daemon.api, 503), 20, "/readyz 503 with a read-only state directory")
    _, body, _ = await probe(daemon.api, "/readyz")
    assert body["store"]["kind"] in ("cannot_open", "read_only"), body
    await store_retried(daemon.api, 2)  # it keeps trying, and stays up
    assert daemon.alive(), daemon.log_text()[-3000:]
    assert disk.read_only(False)
    await until(lambda: readyz_is(daemon.api, 200), 30, "/readyz 200 once the directory is writable")
    await every_end_delivered(receiver, jobs, timeout=30)
    assert daemon.stop() == 0


async def test_database_locked_by_another_process(
    tmp_path: Path, sim: Sim, receiver: Receiver, make_daemon: MakeDaemon
) -> None:
    """Another process holds the write lock: the event loop is never blocked waiting for it (/healthz stays
    fast), the daemon turns not-ready, and once the lock is released it resumes and delivers everything."""
    watched = await active_jobs(sim, 15)
    (tmp_path / "watchlist.txt").write_text("\n".join(watched) + "\n")
    daemon = make_daemon()
    daemon.start()
    await daemon.wait_ready()
    await all_polled(sim, watched)
    with closing(sqlite3.connect(tmp_path / "state" / "watcher.db", isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        jobs = await end_jobs(sim, watched)
        slowest = 0.0
        until_s = time.monotonic() + 6.0
        while time.monotonic() < until_s:
            status, _, took = await probe(daemon.api, "/healthz")
            assert status == 200
            slowest = max(slowest, took)
            await asyncio.sleep(0.02)
        # Waiting for the lock on the loop would take SQLite's 5 s lock timeout; load adds far less.
        assert slowest < 2.0, f"/healthz took {slowest:.2f}s: the event loop waited for the lock"
        await until(lambda: readyz_is(daemon.api, 503), 15, "/readyz 503 while the database is locked")
        status, body, _ = await probe(daemon.api, "/readyz")
        assert body["store"]["kind"] == "locked", body
        assert daemon.alive(), daemon.log_text()[-3000:]
        other.execute("ROLLBACK")
    await until(lambda: readyz_is(daemon.api, 200), 30, "/readyz 200 once the lock is released")
    await every_end_delivered(receiver, jobs, timeout=30)
    assert daemon.stop() == 0
    assert_all_json(daemon.log_path)


async def test_wal_stays_bounded(
    tmp_path: Path, sim: Sim, receiver: Receiver, make_daemon: MakeDaemon
) -> None:
    """200 jobs polled for several seconds, some finishing: the WAL never grows far past its limit."""
    jobs = await scripted_jobs(sim, 200, first_s=2.0, spread_s=6.0)
    (tmp_path / "watchlist.txt").write_text("\n".join(jobs) + "\n")
    daemon = make_daemon()
    daemon.start()
    await daemon.wait_ready()
    wal = tmp_path / "state" / "watcher.db-wal"
    biggest = 0
    until_s = time.monotonic() + 8.0
    while time.monotonic() < until_s:
        biggest = max(biggest, wal.stat().st_size if wal.exists() else 0)
        await asyncio.sleep(0.05)
    await every_end_delivered(receiver, jobs, timeout=30)
    assert daemon.stop() == 0
    assert biggest < 2 * WAL_MAX_BYTES, f"the WAL reached {biggest} bytes"
