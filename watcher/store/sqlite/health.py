"""SQLite failures and upkeep: which errors are outages, rollbacks that never hide the cause, waiting for a
lock without blocking the event loop, a bounded WAL, and an integrity check after an outage (SPEC §16).

A full disk, a read-only file system, another process holding the write lock, an I/O error or a file that
cannot be opened make the whole store unusable for a while: `sqlite_error` turns them into `StoreOutage`,
which the daemon's loops wait out. Anything else (a constraint, a bad statement) is a plain `StoreError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import time
from pathlib import Path

import aiosqlite
import structlog

from watcher.errors import StoreError
from watcher.store.faults import StoreFault, StoreOutage

log = structlog.get_logger("watcher.store")

_FAULTS = {
    sqlite3.SQLITE_FULL: StoreFault.DISK_FULL,
    sqlite3.SQLITE_READONLY: StoreFault.READ_ONLY,
    sqlite3.SQLITE_BUSY: StoreFault.LOCKED,
    sqlite3.SQLITE_LOCKED: StoreFault.LOCKED,
    sqlite3.SQLITE_PROTOCOL: StoreFault.LOCKED,  # a WAL lock race with another process
    sqlite3.SQLITE_IOERR: StoreFault.IO_ERROR,
    sqlite3.SQLITE_CANTOPEN: StoreFault.CANNOT_OPEN,
}
_OS_FAULTS = {
    errno.ENOSPC: StoreFault.DISK_FULL,
    errno.EDQUOT: StoreFault.DISK_FULL,
    errno.EFBIG: StoreFault.DISK_FULL,
    errno.EROFS: StoreFault.READ_ONLY,
    errno.EACCES: StoreFault.READ_ONLY,
    errno.EPERM: StoreFault.READ_ONLY,
}
# The loop's own connection waits this long for a lock inside SQLite (blocking the loop), then gives the
# loop back and tries again, for up to HOT_LOCK_WAIT_S in all before the store counts as locked.
HOT_BUSY_TIMEOUT_MS = 10
HOT_LOCK_WAIT_S = 1.0
_HOT_RETRY_MAX_S = 0.05
# A WAL past this size is checkpointed with TRUNCATE (copied into the database and cut to zero); after any
# other checkpoint, SQLite cuts a WAL that starts over back to this size (journal_size_limit).
WAL_MAX_BYTES = 1024 * 1024
# Each checkpoint waits at most this long for readers: if one is in the way, the next write tries again.
_CHECKPOINT_BUSY_MS = 100
_BUSY_TIMEOUT_MS = 5000


def fault_of_sqlite(e: BaseException) -> StoreFault | None:
    """The outage an sqlite3 or OS error means, or None if it is not one."""
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", None)
        return None if code is None else _FAULTS.get(code & 0xFF)
    if isinstance(e, OSError):
        return _OS_FAULTS.get(e.errno or 0, StoreFault.IO_ERROR)
    return None


def sqlite_error(path: Path, e: BaseException, doing: str = "") -> StoreError:
    """A one-line error naming the file and SQLite's own words: a StoreOutage for an outage."""
    what = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    name = getattr(e, "sqlite_errorname", None)
    message = f"store {path}: {doing}{what}" + (f" ({name})" if name else "")
    fault = fault_of_sqlite(e)
    return StoreError(message) if fault is None else StoreOutage(message, fault)


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already done so; never raises.

    After a full disk or an I/O error SQLite may roll the transaction back by itself, and a ROLLBACK then
    fails with "no transaction is active": that error must not replace the one that explains what happened.
    """
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as e:
        log.warning("store.rollback_failed", error=str(e))


async def rollback_async(db: aiosqlite.Connection) -> None:
    """`rollback` for the aiosqlite connection (shielded: a cancelled caller must not leave it in a
    transaction)."""
    if not db.in_transaction:
        return
    try:
        await asyncio.shield(db.rollback())
    except sqlite3.Error as e:
        log.warning("store.rollback_failed", error=str(e))


async def begin_immediate(hot: sqlite3.Connection, wait_s: float = HOT_LOCK_WAIT_S) -> None:
    """BEGIN IMMEDIATE on the loop's connection: while another process holds the write lock, wait for it
    between short attempts on the event loop instead of inside SQLite, up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    pause = 0.002
    while True:
        try:
            hot.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as e:
            if fault_of_sqlite(e) is not StoreFault.LOCKED or time.monotonic() >= deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(2 * pause, _HOT_RETRY_MAX_S)


def wal_bytes(path: Path) -> int:
    """The size of the database's WAL file (0 when there is none)."""
    try:
        return os.stat(f"{path}-wal").st_size
    except OSError:
        return 0


def checkpoint(path: Path, mode: str) -> tuple[int, int, int]:
    """`PRAGMA wal_checkpoint(mode)` on a connection of its own (blocking: run it in a thread)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA busy_timeout = {_CHECKPOINT_BUSY_MS}")
        busy, frames, done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return int(busy), int(frames), int(done)


def quick_check(path: Path) -> list[str]:
    """`PRAGMA quick_check` on a connection of its own (blocking): `["ok"]` or the problems found."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        return [str(r[0]) for r in conn.execute("PRAGMA quick_check(20)").fetchall()]


class Upkeep:
    """Background care of one SQLite file: WAL checkpoints, and an integrity check after a write outage.

    The store calls `wrote` after every committed write and `failed` after a write that failed. Checkpoints
    run on a worker thread under the store's lock (so no write lands in between and the WAL can start
    over): a PASSIVE one every `checkpoint_every` poll batches, a TRUNCATE one as soon as the WAL is past
    `WAL_MAX_BYTES`. The first write that works after failures starts a `quick_check`, logged as
    `store.integrity_check`.
    """

    def __init__(self, path: Path, lock: asyncio.Lock, checkpoint_every: int) -> None:
        self._path = path
        self._lock = lock
        self._every = checkpoint_every
        self._batches = 0
        self._outage = False
        self._checkpointing: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """True while a checkpoint is under way."""
        return self._checkpointing is not None

    def failed(self, e: StoreError) -> None:
        """A write failed: after anything but a lock held elsewhere, the next one that works is a recovery
        worth an integrity check."""
        if not (isinstance(e, StoreOutage) and e.fault is StoreFault.LOCKED):
            self._outage = True

    def wrote(self, *, batch: bool = False) -> None:
        """A write was committed (`batch`: the scheduler's poll results); start what is due."""
        if self._outage:
            self._outage = False
            if self._checking is None:
                self._checking = asyncio.create_task(self._check(), name="sqlite-integrity-check")
        if batch:
            self._batches += 1
        if self._checkpointing is not None:
            return
        mode = None
        if wal_bytes(self._path) > WAL_MAX_BYTES:
            mode = "TRUNCATE"
        elif batch and self._batches % self._every == 0:
            mode = "PASSIVE"
        if mode is not None:
            self._checkpointing = asyncio.create_task(self._checkpoint(mode), name="sqlite-checkpoint")

    async def close(self) -> None:
        """Wait for what is running."""
        tasks = [t for t in (self._checkpointing, self._checking) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _checkpoint(self, mode: str) -> None:
        try:
            # Under the store's lock: with no write in between, the checkpoint gets to the end of the WAL
            # and the next commit starts it over instead of growing it. Polls go on meanwhile; only claims
            # and saves wait, and the scheduler has claimed ahead and does not wait for its saves.
            async with self._lock:
                await asyncio.to_thread(checkpoint, self._path, mode)
        except sqlite3.Error as e:
            log.warning("store.checkpoint_failed", path=str(self._path), mode=mode, error=str(e))
        finally:
            self._checkpointing = None

    async def _check(self) -> None:
        started = time.monotonic()
        try:
            problems = await asyncio.to_thread(quick_check, self._path)
        except sqlite3.Error as e:
            log.error("store.integrity_check", path=str(self._path), result="failed", error=str(e))
            return
        finally:
            self._checking = None
        took = round(time.monotonic() - started, 3)
        if problems == ["ok"]:
            log.info("store.integrity_check", path=str(self._path), result="ok", duration_s=took)
        else:
            log.error(
                "store.integrity_check",
                path=str(self._path),
                result="problems",
                problems=problems,
                duration_s=took,
            )


def is_poison(exc: BaseException) -> bool:
    """True when a write failed because of the data written, not because the database cannot be written
    (`fault_of_sqlite`: full, read-only, locked, I/O): a constraint, or Python's own error while binding a
    value (an integer too large for SQLite), belongs to the row."""
    return isinstance(exc, Exception) and fault_of_sqlite(exc) is None
