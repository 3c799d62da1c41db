"""The SQLite store's two connections to one file, behind one lock: opening, pragmas, migrations, closing.

aiosqlite runs every statement on one thread, except the scheduler's claims and saves, which run on the
event loop's own connection (`hot_connection` says why); an `asyncio.Lock` keeps one caller's
multi-statement transaction from interleaving with another's, on either connection. Every write
transaction is `BEGIN IMMEDIATE`, so it takes the write lock up front instead of failing to upgrade a read
lock half-way. sqlite3 errors become `StoreError`s here (`StoreOutage` for an outage, see `.health`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from watcher.errors import StoreError
from watcher.store.faults import StoreOutage
from watcher.store.schema import packaged_migrations
from watcher.store.sqlite.health import (
    HOT_BUSY_TIMEOUT_MS,
    WAL_MAX_BYTES,
    Upkeep,
    rollback_async,
    sqlite_error,
)

BUSY_TIMEOUT_MS = 5000
# Poll batches between WAL checkpoints (a bigger WAL is checkpointed at once, see `Upkeep`).
CHECKPOINT_EVERY = 64


def sqlite_path(url: str) -> Path:
    """The file a `sqlite:///relative.db` or `sqlite:////abs/path.db` URL names (SQLAlchemy's convention)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url or "#" in url or len(url) == len(prefix):
        raise StoreError(f"store.url: {url!r} is not sqlite:///relative.db or sqlite:////absolute/path.db")
    return Path(url[len(prefix) :])


def migrations() -> list[tuple[int, str]]:
    """The packaged SQLite migrations as `(version, sql)`, in the order they apply."""
    return packaged_migrations("sqlite")


def hot_connection(path: Path) -> sqlite3.Connection:
    """The connection of the scheduler's hot path, used on the event loop's thread only.

    aiosqlite steps every statement on its own thread, and the sqlite3 driver releases and re-takes the GIL
    around every row it steps: with batches of results in flight that thread and the event loop handed the
    GIL to each other hundreds of times a second, and the loop's socket calls waited each time. A claim or
    a save of a batch is a few hundred microseconds of C work, cheaper done on the loop than handed over.
    This connection never checkpoints by itself (`Upkeep` does, off the loop), and in WAL mode with
    synchronous=NORMAL a commit does not fsync. Its busy timeout is short: a lock held by another process
    is waited for between attempts (`begin_immediate`), never for long on the loop.
    """
    hot = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        hot.execute(f"PRAGMA busy_timeout = {HOT_BUSY_TIMEOUT_MS}")
        hot.execute("PRAGMA synchronous = NORMAL")
        hot.execute("PRAGMA foreign_keys = ON")
        hot.execute("PRAGMA wal_autocheckpoint = 0")
        # A WAL that starts over is cut back to this size.
        hot.execute(f"PRAGMA journal_size_limit = {WAL_MAX_BYTES}")
    except sqlite3.Error:
        hot.close()
        raise
    return hot


def _statements(script: str) -> list[str]:
    """Split a migration into statements; `complete_statement` keeps semicolons inside strings intact."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") for ln in buf.strip().splitlines()):
        raise StoreError(f"unterminated statement in a migration: {buf.strip()[:80]!r}")
    return out


async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
    """Apply every packaged migration newer than the file's `user_version`, each in its transaction."""
    known = migrations()
    latest = known[-1][0] if known else 0
    for version, sql in known:
        await db.execute("BEGIN IMMEDIATE")
        try:
            # Read inside the write lock, so two processes opening a new file cannot both migrate it.
            async with db.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            current = int(row[0]) if row else 0
            if current > latest:
                raise StoreError(
                    f"store {path} has schema version {current}, newer than the {latest} this"
                    " watcher knows; upgrade job-watcher or point store.url at another file"
                )
            if current < version:
                for stmt in _statements(sql):
                    await db.execute(stmt)
                await db.execute(f"PRAGMA user_version = {version}")
            await db.commit()
        except BaseException:
            await rollback_async(db)
            raise


class Connections:
    """The aiosqlite connection, the event loop's `hot` one, the lock both are used under, and the upkeep
    (checkpoints, integrity checks) of the file they share."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: aiosqlite.Connection | None = None
        # The scheduler's claims and saves run on this one, on the event loop's thread (`hot_connection`).
        self.hot: sqlite3.Connection | None = None
        self.lock = asyncio.Lock()
        self.upkeep = Upkeep(path, self.lock, CHECKPOINT_EVERY)

    async def open(self) -> None:
        """Create the file if needed, set the pragmas, migrate and clear stale delivery leases."""
        if self.db is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise sqlite_error(self.path, e, "cannot create its directory: ") from e
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error as e:
            raise sqlite_error(self.path, e, "cannot open: ") from e
        try:
            await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute(f"PRAGMA journal_size_limit = {WAL_MAX_BYTES}")
            # NORMAL in WAL mode survives a process crash (SIGKILL) with every committed transaction; only an
            # OS crash or power loss may roll back the last few, which FULL would protect at an fsync each.
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await _migrate(db, self.path)
            # A delivery claimed by a killed process is retried at once after a restart, not after its lease.
            await db.execute("BEGIN IMMEDIATE")
            await db.execute("UPDATE deliveries SET lease = NULL, lease_until = NULL WHERE lease IS NOT NULL")
            await db.commit()
        except (sqlite3.Error, StoreError) as e:
            await db.close()
            if isinstance(e, StoreError):
                raise
            raise sqlite_error(self.path, e, "cannot open: ") from e
        try:
            self.hot = hot_connection(self.path)
        except sqlite3.Error as e:
            await db.close()
            raise sqlite_error(self.path, e, "cannot open: ") from e
        self.db = db

    async def close(self) -> None:
        """Close both connections once the upkeep is done; safe to call twice."""
        db, self.db = self.db, None
        hot, self.hot = self.hot, None
        await self.upkeep.close()
        if hot is not None:
            hot.close()
        if db is not None:
            await db.close()

    async def ping(self) -> bool:
        """True if a trivial query answers."""
        if self.db is None:
            return False
        try:
            async with self.db.execute("SELECT 1") as cur:
                return await cur.fetchone() is not None
        except sqlite3.Error:
            return False

    def hot_db(self) -> sqlite3.Connection:
        """The hot connection; a `StoreOutage` when the store is not open."""
        if self.hot is None:
            raise StoreOutage(f"store {self.path} is not open")
        return self.hot

    @asynccontextmanager
    async def read(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, for statements that need no transaction; sqlite errors become StoreError."""
        if self.db is None:
            raise StoreOutage(f"store {self.path} is not open")
        async with self.lock:
            try:
                yield self.db
            except sqlite3.Error as e:
                raise sqlite_error(self.path, e) from e

    @asynccontextmanager
    async def write(self) -> AsyncIterator[aiosqlite.Connection]:
        """A `BEGIN IMMEDIATE` transaction, committed on success and rolled back on any exception."""
        try:
            async with self.read() as db:
                await db.execute("BEGIN IMMEDIATE")
                changes = db.total_changes
                try:
                    yield db
                    await db.commit()
                except BaseException:
                    await rollback_async(db)
                    raise
        except StoreOutage as e:
            self.upkeep.failed(e)
            raise
        if db.total_changes != changes:  # an empty transaction (a claim that found nothing) wrote nothing
            self.upkeep.wrote()


async def select(db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """Every row of `sql`: one trip to aiosqlite's thread instead of three (execute, fetchall, close), which
    on the hot path is each a thread hand-off and a loop wake-up."""
    return list(await db.execute_fetchall(sql, params))
