"""The SQLite store: one file, one process (SPEC §5, §6).

Durable state lives in the tables; which watch is due next lives in an in-memory `DueIndex`, rebuilt by
`restore` at start-up, because only this process writes the file. Delivery leases live in the table so a
claim and its fencing are one UPDATE, and `open` clears them all: a delivery claimed by a killed process is
retried at once after the restart instead of after its lease.

Concurrency: aiosqlite runs every statement on one thread, except the scheduler's claims and saves, which
run on the event loop's own connection (`_hot_connection` says why); an `asyncio.Lock` keeps one caller's
multi-statement transaction from interleaving with another's, on either connection. Every write
transaction is `BEGIN IMMEDIATE`, so it takes the write lock up front instead of failing to upgrade a read
lock half-way. Outages (a full disk, a read-only file system, a lock held by another process) are
`StoreOutage`s, and the WAL is kept small: see `watcher.store.sqlite_health`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from watcher import strictjson
from watcher.containment import describe
from watcher.errors import StoreError
from watcher.models import (
    Delivery,
    DeliveryState,
    DeliveryUpdate,
    Event,
    FailureNoted,
    Registration,
    SavedPoll,
    Source,
    StoreCounts,
    Watch,
)
from watcher.store.base import LIST_STATUS_SQL, RegisterResult, Store, SyncResult, WatchPage
from watcher.store.due import DueIndex
from watcher.store.faults import StoreOutage
from watcher.store.sqlite_health import (
    HOT_BUSY_TIMEOUT_MS,
    WAL_MAX_BYTES,
    Upkeep,
    begin_immediate,
    fault_of_sqlite,
    rollback,
    rollback_async,
    sqlite_error,
)

T = TypeVar("T")
log = structlog.get_logger("watcher.store")

# Bound `IN (...)` lists well under SQLite's host-parameter limit (32766 since 3.32, 999 before).
_CHUNK = 500
_BUSY_TIMEOUT_MS = 5000
_RESTORE_PAGE = 5000
# Registrations per write transaction: small enough that the scheduler's claims and saves, which share the
# connection, are not held up for long by a batch registration (see `register`).
_REGISTER_CHUNK = 250

_WATCH_COLS = (
    "job_id, workspace, sources, labels, webhooks, max_watch_s, registered_at, status, final, polls, streak,"
    " errors, not_found, next_poll_at, last_polled_at, finished_at, last_error, upstream_updated_at,"
    " failures, quarantined_at, quarantine_reason"
)
_DELIVERY_COLS = (
    "d.id, d.webhook, d.state, d.attempts, d.next_attempt_at, d.created_at, d.last_error, d.delivered_at,"
    " d.lease, e.id, e.job_id, e.workspace, e.type, e.created_at, e.payload"
)
# The oldest pending delivery of its (job, webhook) pair; `d` is the candidate row.
_PAIR_HEAD = (
    "NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.state = 'pending'"
    " AND p.job_id = d.job_id AND p.webhook = d.webhook AND p.id < d.id)"
)


def sqlite_path(url: str) -> Path:
    """The file a `sqlite:///relative.db` or `sqlite:////abs/path.db` URL names (SQLAlchemy's convention)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url or "#" in url or len(url) == len(prefix):
        raise StoreError(f"store.url: {url!r} is not sqlite:///relative.db or sqlite:////absolute/path.db")
    return Path(url[len(prefix) :])


def _chunks(items: Sequence[T]) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _dumps(value: Any) -> str:
    return strictjson.dumps(value)  # strict JSON whatever it is given: no NaN, no lone surrogate


def _watch(row: Sequence[Any]) -> Watch:
    """A watch from a `_WATCH_COLS` row; built positionally and without parsing the usual empty labels and
    absent webhooks, since a claim builds one per poll."""
    labels, webhooks = row[3], row[4]
    return Watch(
        row[0], row[1], row[2], row[6],
        {} if labels == "{}" else json.loads(labels),
        None if webhooks is None else tuple(json.loads(webhooks)),
        row[5], row[7], row[8], row[9], row[10], row[11], row[12], row[13], row[14], row[15], row[16],
        row[17], 0, row[18], row[19], row[20],
    )  # fmt: skip


_SAVE_WATCH = (
    "UPDATE watches SET status = ?, final = ?, polls = ?, streak = ?, errors = ?, not_found = ?,"
    " next_poll_at = ?, last_polled_at = ?, finished_at = ?, last_error = ?, upstream_updated_at = ?"
    " WHERE job_id = ?"
)
# Quiet polls (no event, not final) are written behind: within this many seconds of the first one that is
# not on disk yet, and every one of them at `close` (see `SQLiteStore.save_polls`).
WRITE_BEHIND_S = 5.0
# Deferred watches written per save: the oldest first, so a backlog drains over several saves instead of
# holding the event loop for one long transaction.
_BEHIND_FLUSH = 512
# More deferred watches than this are written at once, whatever their age (bounds the memory they hold).
_BEHIND_MAX = 50_000
# Poll batches between WAL checkpoints (a bigger WAL is checkpointed at once, see `Upkeep`).
_CHECKPOINT_EVERY = 64


def _hot_connection(path: Path) -> sqlite3.Connection:
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


def _insert_events(db: sqlite3.Connection, events: dict[str, tuple[Event, tuple[str, ...]]]) -> None:
    """Events not stored yet, each with one pending delivery per webhook it is routed to."""
    ids = list(events)
    stored: set[str] = set()
    for chunk in _chunks(ids):
        sql = f"SELECT id FROM events WHERE id IN ({_marks(len(chunk))})"  # noqa: S608
        stored.update(r[0] for r in db.execute(sql, chunk).fetchall())
    new = [events[i] for i in ids if i not in stored]
    if not new:
        return
    db.executemany(
        "INSERT OR IGNORE INTO events (id, job_id, workspace, type, created_at, payload)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(e.id, e.job_id, e.workspace, e.type, e.created_at, _dumps(e.payload)) for e, _ in new],
    )
    db.executemany(
        "INSERT INTO deliveries (event_id, job_id, webhook, state, attempts, next_attempt_at, created_at)"
        " VALUES (?, ?, ?, 'pending', 0, ?, ?)",
        [(e.id, e.job_id, name, e.created_at, e.created_at) for e, hooks in new for name in hooks],
    )


def _is_poison(exc: BaseException) -> bool:
    """True when a write failed because of the data written, not because the database cannot be written
    (`fault_of_sqlite`: full, read-only, locked, I/O): a constraint, or Python's own error while binding a
    value (an integer too large for SQLite), belongs to the row."""
    return isinstance(exc, Exception) and fault_of_sqlite(exc) is None


def _event(row: Sequence[Any]) -> Event:
    return Event(
        id=row[0], job_id=row[1], workspace=row[2], type=row[3], created_at=row[4], payload=json.loads(row[5])
    )


def _delivery(row: Sequence[Any]) -> Delivery:
    return Delivery(
        id=row[0],
        webhook=row[1],
        state=DeliveryState(row[2]),
        attempts=row[3],
        next_attempt_at=row[4],
        created_at=row[5],
        last_error=row[6],
        delivered_at=row[7],
        lease=row[8] or 0,
        event=_event(row[9:]),
    )


def migrations() -> list[tuple[int, str]]:
    """The packaged schema migrations as `(version, sql)`, in the order they apply."""
    found = []
    for res in resources.files("watcher.store.migrations").iterdir():
        name = res.name
        if name.startswith("sqlite_") and name.endswith(".sql"):
            found.append((int(name.split("_")[1]), res.read_text(encoding="utf-8")))
    found.sort()
    if [v for v, _ in found] != list(range(1, len(found) + 1)):
        raise StoreError(f"packaged SQLite migrations are not numbered 1..n: {[v for v, _ in found]}")
    return found


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


def _save_row(w: Watch) -> tuple[Any, ...]:
    return (
        w.status, w.final, w.polls, w.streak, w.errors, w.not_found, w.next_poll_at, w.last_polled_at,
        w.finished_at, w.last_error, w.upstream_updated_at, w.job_id,
    )  # fmt: skip


def _overlay(stored: Watch, newer: Watch) -> Watch:
    """`stored` (read from the table) with the polling state of a deferred save."""
    w = newer.copy()
    w.sources = stored.sources  # the only column that changes outside polling (register, sync_source)
    w.lease = 0
    return w


class SQLiteStore(Store):
    """The default store: a WAL-mode SQLite file and an in-memory due index."""

    def __init__(self, path: Path | str, write_behind_s: float = WRITE_BEHIND_S) -> None:
        self.path = Path(path)
        # Quiet polls not written yet: job id -> [monotonic time of the first unwritten one, latest state].
        # Insertion order is the order they became due for writing; 0 writes every save at once.
        self._write_behind_s = write_behind_s
        self._behind: dict[str, list[Any]] = {}
        self._db: aiosqlite.Connection | None = None
        # The scheduler's claims and saves run on this connection, on the event loop's thread (see `_hot`).
        self._hot: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._upkeep = Upkeep(self.path, self._lock, _CHECKPOINT_EVERY)
        self._index = DueIndex()
        self._delivery_tokens = 0

    # -- lifecycle ------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file if needed, set the pragmas, migrate and clear stale delivery leases."""
        if self._db is not None:
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
            await db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute(f"PRAGMA journal_size_limit = {WAL_MAX_BYTES}")
            # NORMAL in WAL mode survives a process crash (SIGKILL) with every committed transaction; only an
            # OS crash or power loss may roll back the last few, which FULL would protect at an fsync each.
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await self._migrate(db)
            await db.execute("BEGIN IMMEDIATE")
            await db.execute("UPDATE deliveries SET lease = NULL, lease_until = NULL WHERE lease IS NOT NULL")
            await db.commit()
        except (sqlite3.Error, StoreError) as e:
            await db.close()
            if isinstance(e, StoreError):
                raise
            raise sqlite_error(self.path, e, "cannot open: ") from e
        try:
            self._hot = _hot_connection(self.path)
        except sqlite3.Error as e:
            await db.close()
            raise sqlite_error(self.path, e, "cannot open: ") from e
        self._db = db

    async def _migrate(self, db: aiosqlite.Connection) -> None:
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
                        f"store {self.path} has schema version {current}, newer than the {latest} this"
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

    async def close(self) -> None:
        """Write the deferred quiet polls, close the connections, forget the due index; safe to call twice."""
        if self._hot is not None and self._behind:
            try:
                async with self._lock:
                    await self._write_all_behind(self._hot)
            except sqlite3.Error as e:
                log.error(
                    "store.write_behind_failed", path=str(self.path), error=str(e), watches=len(self._behind)
                )
        self._behind.clear()
        db, self._db = self._db, None
        hot, self._hot = self._hot, None
        self._index.clear()
        await self._upkeep.close()
        if hot is not None:
            hot.close()
        if db is not None:
            await db.close()

    async def ping(self) -> bool:
        """True if a trivial query answers."""
        if self._db is None:
            return False
        try:
            async with self._db.execute("SELECT 1") as cur:
                return await cur.fetchone() is not None
        except sqlite3.Error:
            return False

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, for statements that need no transaction; sqlite errors become StoreError."""
        if self._db is None:
            raise StoreOutage(f"store {self.path} is not open")
        async with self._lock:
            try:
                yield self._db
            except sqlite3.Error as e:
                raise sqlite_error(self.path, e) from e

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """A `BEGIN IMMEDIATE` transaction, committed on success and rolled back on any exception."""
        try:
            async with self._read() as db:
                await db.execute("BEGIN IMMEDIATE")
                changes = db.total_changes
                try:
                    yield db
                    await db.commit()
                except BaseException:
                    await rollback_async(db)
                    raise
        except StoreOutage as e:
            self._upkeep.failed(e)
            raise
        if db.total_changes != changes:  # an empty transaction (a claim that found nothing) wrote nothing
            self._upkeep.wrote()

    async def _select(self, db: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        # One trip to aiosqlite's thread instead of three (execute, fetchall, close): on the hot path each
        # trip is a thread hand-off and a loop wake-up.
        return list(await db.execute_fetchall(sql, params))

    async def _watch_rows(self, db: aiosqlite.Connection, cols: str, ids: Sequence[str]) -> list[Any]:
        rows: list[Any] = []
        for chunk in _chunks(ids):
            sql = f"SELECT {cols} FROM watches WHERE job_id IN ({_marks(len(chunk))})"  # noqa: S608
            rows += await self._select(db, sql, chunk)
        return rows

    # -- watches --------------------------------------------------------------------------------------

    async def restore(self, now: float, first_due: Callable[[Watch], float]) -> int:
        """Page through unfinished watches by id, give each its first due time, write them back, re-index."""
        items: list[tuple[str, float]] = []
        async with self._read():
            await self._write_all_behind(self._hot_db())
        async with self._write() as db:
            last = ""
            while True:
                rows = await self._select(
                    db,
                    f"SELECT {_WATCH_COLS} FROM watches"  # noqa: S608
                    " WHERE final IS NULL AND quarantined_at IS NULL AND job_id > ?"
                    " ORDER BY job_id LIMIT ?",
                    (last, _RESTORE_PAGE),
                )
                if not rows:
                    break
                page = [(first_due(_watch(r)), r[0]) for r in rows]
                await db.executemany("UPDATE watches SET next_poll_at = ? WHERE job_id = ?", page)
                items += [(jid, due) for due, jid in page]
                last = rows[-1][0]
        self._index.clear()
        self._index.put_many(items)
        return len(items)

    async def register(self, regs: Sequence[Registration], now: float) -> list[RegisterResult]:
        """Insert new watches due at `now`; OR the source into existing ones.

        A transaction per `_REGISTER_CHUNK` registrations, not one for the whole batch: the connection is
        shared with the scheduler, whose claims and saves would otherwise queue behind a 1,000-item batch
        (several, when clients post concurrently) and polling would stall. Registering is idempotent, so
        a batch cut short by a failure is completed by sending it again.
        """
        results: list[RegisterResult] = []
        for start in range(0, len(regs), _REGISTER_CHUNK):
            async with self._write() as db:
                done, created = await self._register(db, regs[start : start + _REGISTER_CHUNK], now)
            results += done
            for jid in created:
                self._index.put(jid, now)
        return results

    async def _register(
        self, db: aiosqlite.Connection, regs: Sequence[Registration], now: float
    ) -> tuple[list[RegisterResult], list[str]]:
        ids = list({r.job_id: None for r in regs})
        present = {r[0] for r in await self._watch_rows(db, "job_id", ids)}
        results: list[RegisterResult] = []
        inserts: list[tuple[Any, ...]] = []
        merges: list[tuple[int, str]] = []
        for reg in regs:
            if reg.job_id in present:
                results.append(RegisterResult.EXISTING)
                merges.append((int(reg.source), reg.job_id))
                continue
            present.add(reg.job_id)
            results.append(RegisterResult.CREATED)
            webhooks = None if reg.webhooks is None else _dumps(list(reg.webhooks))
            inserts.append(
                (
                    reg.job_id,
                    reg.workspace,
                    int(reg.source),
                    _dumps(reg.labels),
                    webhooks,
                    reg.max_watch_s,
                    now,
                    now,
                )
            )
        await db.executemany(
            "INSERT INTO watches (job_id, workspace, sources, labels, webhooks, max_watch_s, registered_at,"
            " next_poll_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            inserts,
        )
        await db.executemany("UPDATE watches SET sources = sources | ? WHERE job_id = ?", merges)
        return results, [row[0] for row in inserts]

    async def sync_source(self, source: Source, regs: Sequence[Registration], now: float) -> SyncResult:
        """Make `source`'s watches equal to `regs`; counts are ids that joined or left the source."""
        bit = int(source)
        wanted = {r.job_id: r for r in regs}
        async with self._write() as db:
            have = {
                r[0]: (r[1], r[2])
                for r in await self._select(
                    db, "SELECT job_id, sources, final FROM watches WHERE sources & ?", (bit,)
                )
            }
            joining = [replace(r, source=source) for j, r in wanted.items() if j not in have]
            _, created = await self._register(db, joining, now)
            leaving = [j for j in have if j not in wanted]
            gone = [j for j in leaving if have[j][0] == bit and have[j][1] is None]
            await db.executemany(
                "UPDATE watches SET sources = sources & ? WHERE job_id = ?", [(~bit, j) for j in leaving]
            )
            for chunk in _chunks(gone):
                await db.execute(f"DELETE FROM watches WHERE job_id IN ({_marks(len(chunk))})", chunk)  # noqa: S608
        for jid in created:
            self._index.put(jid, now)
        for jid in gone:
            self._index.discard(jid)
            self._behind.pop(jid, None)
        return SyncResult(added=len(joining), removed=len(leaving))

    async def delete_watch(self, job_id: str) -> bool:
        """Delete the watch and its fully delivered events; pending and dead deliveries stay."""
        async with self._write() as db:
            cur = await db.execute("DELETE FROM watches WHERE job_id = ?", (job_id,))
            deleted = cur.rowcount > 0
            if deleted:
                await self._drop_events(db, [job_id], keep=("pending", "dead"))
        if deleted:
            self._index.discard(job_id)
            self._behind.pop(job_id, None)
        return deleted

    async def _drop_events(
        self, db: aiosqlite.Connection, job_ids: Sequence[str], keep: tuple[str, ...]
    ) -> None:
        """Delete the jobs' events and their deliveries, except events with a delivery in a `keep` state."""
        states = _marks(len(keep))
        for chunk in _chunks(job_ids):
            marks = _marks(len(chunk))
            await db.execute(
                "DELETE FROM deliveries WHERE event_id IN (SELECT e.id FROM events e"  # noqa: S608
                f" WHERE e.job_id IN ({marks}) AND NOT EXISTS (SELECT 1 FROM deliveries k"
                f" WHERE k.event_id = e.id AND k.state IN ({states})))",
                (*chunk, *keep),
            )
            # What is left with a delivery is exactly what must stay.
            await db.execute(
                f"DELETE FROM events WHERE job_id IN ({marks})"  # noqa: S608
                " AND NOT EXISTS (SELECT 1 FROM deliveries k WHERE k.event_id = events.id)",
                chunk,
            )

    async def get_watch(self, job_id: str) -> Watch | None:
        """One watch by id."""
        async with self._read() as db:
            rows = await self._watch_rows(db, _WATCH_COLS, [job_id])
        return self._latest(_watch(rows[0])) if rows else None

    def _latest(self, stored: Watch) -> Watch:
        """A watch read from the table, with its deferred polling state if it has one."""
        entry = self._behind.get(stored.job_id)
        return stored if entry is None else _overlay(stored, entry[1])

    async def list_watches(
        self,
        *,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        label: tuple[str, str] | None = None,
    ) -> WatchPage:
        """Watches ordered by job id after `cursor`; the label filter reads the JSON column row by row."""
        where, params = ["job_id > ?"], [cursor or ""]
        if status is not None:
            where.append(f"{LIST_STATUS_SQL} = ?")
            params.append(status)
        if label is not None:
            # json_each rather than a JSON path: a key may contain dots, quotes or brackets.
            where.append(
                "EXISTS (SELECT 1 FROM json_each(watches.labels) l WHERE l.key = ? AND l.value = ?"
                " AND l.type = 'text')"
            )
            params += [label[0], label[1]]
        sql = f"SELECT {_WATCH_COLS} FROM watches WHERE {' AND '.join(where)} ORDER BY job_id LIMIT ?"  # noqa: S608
        async with self._read() as db:
            rows = await self._select(db, sql, (*params, limit + 1))
        page = [self._latest(_watch(r)) for r in rows[:limit]]
        return WatchPage(page, page[-1].job_id if len(rows) > limit and page else None)

    async def claim_due(self, now: float, limit: int, lease_s: float) -> list[Watch]:
        """Pop due ids from the index; a deferred quiet poll is its own latest state, the rest are read
        from the table (chunked `IN` queries on the hot connection)."""
        behind = self._behind
        async with self._read():
            claimed = self._index.claim(now, limit, lease_s)
            try:
                hot = self._hot_db()
                rows: list[Any] = []
                ids = [j for j, _ in claimed if j not in behind]
                for chunk in _chunks(ids):
                    sql = f"SELECT {_WATCH_COLS} FROM watches WHERE job_id IN ({_marks(len(chunk))})"  # noqa: S608
                    rows += hot.execute(sql, chunk).fetchall()
            except BaseException:
                for jid, token in claimed:
                    self._index.unclaim(jid, token)
                    self._index.put(jid, now)
                raise
        by_id = {r[0]: r for r in rows}
        out = []
        for jid, token in claimed:
            entry = behind.get(jid)
            if entry is not None:
                w = entry[1].copy()
            else:
                row = by_id.get(jid)
                # Gone, finished or quarantined behind the index's back.
                if row is None or row[8] is not None or row[19] is not None:
                    self._index.unclaim(jid, token)
                    continue
                w = _watch(row)
            w.lease = token
            out.append(w)
        return out

    async def release(self, watches: Sequence[Watch]) -> None:
        """Make never-polled claims due again at their old due time, if the claim is still theirs."""
        for w in watches:
            self._index.release(w.job_id, w.lease, w.next_poll_at)

    async def next_due_at(self) -> float | None:
        """Earliest due time (a claimed watch counts at its lease expiry)."""
        return self._index.next_due_at()

    async def count_due(self, now: float) -> int:
        """Due watches not held by a live claim, from the index."""
        return self._index.count_due(now)

    async def save_polls(self, polls: Sequence[SavedPoll]) -> list[bool]:
        """One transaction: fenced watch updates, de-duplicated events, one delivery per event and webhook.

        Write-behind: a quiet poll (no event, polling goes on) changes only polling state that a crash may
        lose (the restart re-polls those watches within `initial_interval_s` anyway, and no event depends
        on it), so it is kept in memory and written with a later save, at most `write_behind_s` after the
        first unwritten one, or at `close`. A watch polled every second is then written every few seconds,
        and its claims need no read. Polls with events or a final state are written in this transaction,
        as before; reads of the API see the deferred state (`get_watch`, `list_watches`). If the
        transaction fails, nothing of it counts: the claims stay, deferred polls stay deferred, and the
        caller saves the same batch again once the store is back (no event is lost).
        """
        ok: list[bool] = []
        taken: set[str] = set()
        updates: list[tuple[Any, ...]] = []
        events: dict[str, tuple[Event, tuple[str, ...]]] = {}
        superseded: dict[str, list[Any]] = {}  # deferred polls this save writes over
        lease_of = self._index.lease_of
        behind = self._behind
        defer = self._write_behind_s > 0
        clock = time.monotonic()
        for saved in polls:
            w = saved.watch
            jid = w.job_id
            fresh = jid not in taken and lease_of(jid) == w.lease
            ok.append(fresh)
            if not fresh:
                continue
            taken.add(jid)
            if defer and not saved.events and w.final is None:
                entry = behind.get(jid)
                if entry is None:
                    behind[jid] = [clock, w]
                else:
                    entry[1] = w
                continue
            displaced = behind.pop(jid, None)
            if displaced is not None:
                superseded[jid] = displaced
            updates.append(_save_row(w))
            for new in saved.events:
                events.setdefault(new.event.id, (new.event, new.webhooks))
        flush = bool(behind) and (
            clock - next(iter(behind.values()))[0] >= self._write_behind_s or len(behind) > _BEHIND_MAX
        )
        if updates or flush:
            try:
                async with self._read():
                    hot = self._hot_db()
                    await begin_immediate(hot)
                    self._commit(hot, updates, events, _BEHIND_FLUSH if flush else 0)
            except StoreError as e:
                for jid, entry in superseded.items():
                    behind.setdefault(jid, entry)
                if isinstance(e, StoreOutage):
                    self._upkeep.failed(e)
                raise
            self._upkeep.wrote(batch=True)
        for saved, fresh in zip(polls, ok, strict=True):
            if fresh:
                w = saved.watch
                if w.final is None:
                    self._index.put(w.job_id, w.next_poll_at)
                else:
                    self._index.discard(w.job_id)
        return ok

    async def _write_all_behind(self, hot: sqlite3.Connection) -> None:
        while self._behind:
            await begin_immediate(hot)
            self._commit(hot, [], {}, _BEHIND_MAX)

    def _commit(
        self,
        hot: sqlite3.Connection,
        updates: list[tuple[Any, ...]],
        events: dict[str, tuple[Event, tuple[str, ...]]],
        deferred: int,
    ) -> None:
        """The transaction the caller began: `updates`, `events`, and the `deferred` oldest deferred watches,
        which stay deferred if it fails (unless the watch was deleted or finished meanwhile)."""
        behind = self._behind
        taken = {jid: behind.pop(jid) for jid in list(itertools.islice(behind, deferred))}
        try:
            # Sorted by id: neighbouring keys share pages.
            hot.executemany(_SAVE_WATCH, updates + [_save_row(taken[j][1]) for j in sorted(taken)])
            if events:
                _insert_events(hot, events)
            hot.execute("COMMIT")
        except BaseException as exc:
            rollback(hot)
            for jid, entry in taken.items():
                if jid in self._index:
                    behind.setdefault(jid, entry)
            if not taken or not _is_poison(exc):
                raise
            # One deferred row the store refuses (its data, not the store being out) must not fail this
            # save, nor every later one that would carry it: write this save's own rows alone, then the
            # deferred ones one by one. The write lock was ours a moment ago, so waiting for it is short.
            hot.execute("BEGIN IMMEDIATE")
            self._commit(hot, updates, events, 0)
            self._write_behind_singly(hot, list(taken))

    def _write_behind_singly(self, hot: sqlite3.Connection, job_ids: list[str]) -> None:
        """Write deferred watches one transaction each; drop the deferred state of a row that is refused.

        Only polling state a crash may lose anyway is dropped; the watch stays due, and if its rows keep
        being refused, the next save that carries an event fails in the scheduler, which quarantines it.
        """
        for jid in job_ids:
            entry = self._behind.pop(jid, None)
            if entry is None:
                continue
            hot.execute("BEGIN IMMEDIATE")
            try:
                hot.execute(_SAVE_WATCH, _save_row(entry[1]))
                hot.execute("COMMIT")
            except BaseException as exc:
                rollback(hot)
                if not _is_poison(exc):
                    self._behind.setdefault(jid, entry)
                    raise
                log.error("store.write_behind_dropped", job_id=jid, error=describe(exc))

    def _hot_db(self) -> sqlite3.Connection:
        if self._hot is None:
            raise StoreOutage(f"store {self.path} is not open")
        return self._hot

    async def note_failure(
        self, watch: Watch, reason: str, now: float, retry_at: float, quarantine_after: int
    ) -> FailureNoted:
        """Count the failure in the row (only the quarantine columns and the due time are written)."""
        jid = watch.job_id
        if self._index.lease_of(jid) != watch.lease:
            return FailureNoted(kept=False)
        async with self._write() as db:
            rows = await self._select(
                db,
                "UPDATE watches SET failures = failures + 1, quarantine_reason = ?, next_poll_at = ?,"
                " quarantined_at = CASE WHEN failures + 1 >= ? THEN ? END"
                " WHERE job_id = ? RETURNING failures",
                (reason, retry_at, quarantine_after, now, jid),
            )
        if not rows or self._index.lease_of(jid) != watch.lease:
            return FailureNoted(kept=False)  # deleted (or claimed again) while we waited for the lock
        failures = int(rows[0][0])
        if failures >= quarantine_after:
            self._index.discard(jid)
            # Deferred polling state of a watch whose writes fail is the likeliest poison: drop it.
            self._behind.pop(jid, None)
            return FailureNoted(True, failures, quarantined=True)
        self._index.put(jid, retry_at)
        return FailureNoted(True, failures)

    async def release_quarantine(self, job_id: str, now: float) -> bool:
        """Clear the quarantine and the failure count; an unfinished watch is due at `now`."""
        async with self._write() as db:
            rows = await self._select(
                db,
                "UPDATE watches SET quarantined_at = NULL, failures = 0, next_poll_at = ?"
                " WHERE job_id = ? AND quarantined_at IS NOT NULL RETURNING final",
                (now, job_id),
            )
        if not rows:
            return False
        if rows[0][0] is None:
            self._index.put(job_id, now)
        return True

    async def purge_finished(self, before: float) -> int:
        """Delete finished watches older than `before` and their events that have no pending delivery."""
        async with self._write() as db:
            rows = await self._select(
                db, "SELECT job_id FROM watches WHERE final IS NOT NULL AND finished_at < ?", (before,)
            )
            ids = [r[0] for r in rows]
            await self._drop_events(db, ids, keep=("pending",))
            for chunk in _chunks(ids):
                await db.execute(f"DELETE FROM watches WHERE job_id IN ({_marks(len(chunk))})", chunk)  # noqa: S608
        return len(ids)

    # -- events and deliveries ------------------------------------------------------------------------

    async def events_for(self, job_id: str) -> list[Event]:
        """A job's events in the order they were stored."""
        async with self._read() as db:
            rows = await self._select(
                db,
                "SELECT id, job_id, workspace, type, created_at, payload FROM events"
                " WHERE job_id = ? ORDER BY seq",
                (job_id,),
            )
        return [_event(r) for r in rows]

    async def claim_deliveries(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        """Claim due, unleased pair heads ordered by (next_attempt_at, id) with one UPDATE."""
        async with self._write() as db:
            rows = await self._select(
                db,
                f"SELECT {_DELIVERY_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id"  # noqa: S608
                " WHERE d.state = 'pending' AND d.next_attempt_at <= ?"
                f" AND (d.lease_until IS NULL OR d.lease_until <= ?) AND {_PAIR_HEAD}"
                " ORDER BY d.next_attempt_at, d.id LIMIT ?",
                (now, now, limit),
            )
            if not rows:
                return []
            self._delivery_tokens += 1
            token = self._delivery_tokens
            for chunk in _chunks([r[0] for r in rows]):
                await db.execute(
                    f"UPDATE deliveries SET lease = ?, lease_until = ? WHERE id IN ({_marks(len(chunk))})",  # noqa: S608
                    (token, now + lease_s, *chunk),
                )
        out = [_delivery(r) for r in rows]
        for d in out:
            d.lease = token
        return out

    async def next_delivery_at(self) -> float | None:
        """Earliest time a pair head becomes claimable (a leased one counts at its lease expiry)."""
        async with self._read() as db:
            rows = await self._select(
                db,
                "SELECT (SELECT d.next_attempt_at FROM deliveries d WHERE d.state = 'pending'"  # noqa: S608
                f" AND d.lease IS NULL AND {_PAIR_HEAD} ORDER BY d.next_attempt_at, d.id LIMIT 1),"
                " (SELECT min(max(d.next_attempt_at, d.lease_until)) FROM deliveries d"
                f" WHERE d.lease IS NOT NULL AND d.state = 'pending' AND {_PAIR_HEAD})",
            )
        times = [t for t in rows[0] if t is not None]
        return min(times, default=None)

    async def finish_delivery(self, delivery: Delivery, update: DeliveryUpdate) -> bool:
        """Record an attempt if `delivery.lease` still holds; clears the lease."""
        async with self._write() as db:
            cur = await db.execute(
                "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?,"
                " delivered_at = ?, lease = NULL, lease_until = NULL"
                " WHERE id = ? AND state = 'pending' AND lease = ?",
                (
                    update.state.value,
                    update.attempts,
                    update.next_attempt_at,
                    update.last_error,
                    update.delivered_at,
                    delivery.id,
                    delivery.lease,
                ),
            )
            return cur.rowcount > 0

    async def list_deliveries(
        self,
        *,
        state: str | None = None,
        webhook: str | None = None,
        limit: int = 100,
        before: int | None = None,
        job_id: str | None = None,
    ) -> list[Delivery]:
        """Newest first below the `before` cursor, optionally filtered by state, webhook and job."""
        where: list[str] = ["1"]
        params: list[Any] = []
        for clause, value in (
            ("d.state = ?", state),
            ("d.webhook = ?", webhook),
            ("d.id < ?", before),
            # Through the events' job index and deliveries_event: no extra index needed.
            ("d.event_id IN (SELECT id FROM events WHERE job_id = ?)", job_id),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = (
            f"SELECT {_DELIVERY_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id"  # noqa: S608
            f" WHERE {' AND '.join(where)} ORDER BY d.id DESC LIMIT ?"
        )
        async with self._read() as db:
            rows = await self._select(db, sql, (*params, limit))
        return [_delivery(r) for r in rows]

    async def get_delivery(self, delivery_id: int) -> Delivery | None:
        """One delivery with its event."""
        async with self._read() as db:
            rows = await self._select(
                db,
                f"SELECT {_DELIVERY_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id"  # noqa: S608
                " WHERE d.id = ?",
                (delivery_id,),
            )
        return _delivery(rows[0]) if rows else None

    async def retry_delivery(self, delivery_id: int, now: float) -> bool:
        """Dead back to pending, attempts reset, due at `now`."""
        async with self._write() as db:
            cur = await db.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                " delivered_at = NULL, lease = NULL, lease_until = NULL WHERE id = ? AND state = 'dead'",
                (now, delivery_id),
            )
            return cur.rowcount > 0

    async def recent_events(self, limit: int) -> list[Event]:
        """The newest stored events first, walking the primary key backwards."""
        async with self._read() as db:
            rows = await self._select(
                db,
                "SELECT id, job_id, workspace, type, created_at, payload FROM events"
                " ORDER BY seq DESC LIMIT ?",
                (max(0, limit),),
            )
        return [_event(r) for r in rows]

    async def watch_counts(self) -> dict[str, int]:
        """Watches per list status, finished ones included (one scan of the table)."""
        async with self._read() as db:
            rows = await self._select(
                db,
                f"SELECT {LIST_STATUS_SQL}, count(*) FROM watches GROUP BY 1",  # noqa: S608
            )
        return dict(rows)

    async def counts(self) -> StoreCounts:
        """Aggregates from SQL, so the gauges are exact after a restart."""
        async with self._read() as db:
            by_status = await self._select(
                db,
                "SELECT COALESCE(status, 'unknown'), count(*) FROM watches"
                " WHERE final IS NULL AND quarantined_at IS NULL GROUP BY 1",
            )
            quarantined = await self._select(
                db, "SELECT count(*) FROM watches WHERE quarantined_at IS NOT NULL AND final IS NULL"
            )
            pending = await self._select(
                db, "SELECT webhook, count(*) FROM deliveries WHERE state = 'pending' GROUP BY webhook"
            )
            dead = await self._select(
                db, "SELECT webhook, count(*) FROM deliveries WHERE state = 'dead' GROUP BY webhook"
            )
            oldest = await self._select(db, "SELECT min(created_at) FROM deliveries WHERE state = 'pending'")
        return StoreCounts(dict(by_status), dict(pending), dict(dead), oldest[0][0], quarantined[0][0])
