"""The SQLite store: one file, one process (SPEC §5, §6).

Durable state lives in the tables; which watch is due next lives in an in-memory `DueIndex`
(`IndexedStore`), rebuilt by `restore` at start-up, because only this process writes the file. Delivery
leases live in the table so a claim and its fencing are one UPDATE, and `open` clears them all: a delivery
claimed by a killed process is retried at once after the restart instead of after its lease.

The two connections and their lock are `.connection`, the SQL and row mapping `.sql`, quiet polls written
behind `.writebehind`; outages (a full disk, a read-only file system, a lock held by another process) are
`StoreOutage`s, and the WAL is kept small: see `.health`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from watcher.clock import Clock, SystemClock
from watcher.errors import StoreError
from watcher.models import Callback, Event, Registration, SavedPoll, Source, Watch
from watcher.store.base import (
    Bound,
    FailureNoted,
    RegisterResult,
    Regs,
    SyncResult,
    WatchPage,
    WatchQuery,
    range_wanted,
)
from watcher.store.faults import StoreOutage
from watcher.store.indexed import IndexedStore
from watcher.store.sql import FINISHED_SETTLED, LIST_STATUS_SQL
from watcher.store.sqlite.connection import Connections, select
from watcher.store.sqlite.endpoints import SQLiteEndpoints
from watcher.store.sqlite.groups import SQLiteGroups
from watcher.store.sqlite.health import begin_immediate
from watcher.store.sqlite.jobtypes import SQLiteJobTypes
from watcher.store.sqlite.sql import (
    WATCH_COLS,
    chunks,
    dumps,
    marks,
    save_row,
    watch_row,
)
from watcher.store.sqlite.writebehind import FLUSH_BATCH, WRITE_BEHIND_S, Deferred, WriteBehind

log = structlog.get_logger("watcher.store")

_RESTORE_PAGE = 5000
# Registrations per write transaction: small enough that the scheduler's claims and saves, which share the
# connection, are not held up for long by a batch registration (see `register`).
_REGISTER_CHUNK = 250


class SQLiteStore(SQLiteEndpoints, SQLiteGroups, SQLiteJobTypes, IndexedStore):
    """The default store: a WAL-mode SQLite file and an in-memory due index; its events and deliveries are
    `SQLiteOutbox`'s, its job types `SQLiteJobTypes`'s."""

    def __init__(
        self, path: Path | str, write_behind_s: float = WRITE_BEHIND_S, clock: Clock | None = None
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self._clock: Clock = clock if clock is not None else SystemClock()  # times the write-behind window
        self.connections = Connections(self.path)
        self._behind = WriteBehind(write_behind_s)
        self._delivery_tokens = 0

    # -- lifecycle ------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file if needed, set the pragmas, migrate and clear stale delivery leases."""
        await self.connections.open()

    async def close(self) -> None:
        """Write the deferred quiet polls, close the connections, forget the due index; safe to call twice."""
        hot = self.connections.hot
        if hot is not None and self._behind:
            try:
                async with self.connections.lock:
                    await self._behind.write_all(hot, self._indexed)
            except sqlite3.Error as e:
                log.error(
                    "store.write_behind_failed", path=str(self.path), error=str(e), watches=len(self._behind)
                )
        self._behind.clear()
        self._index.clear()
        await self.connections.close()

    async def ping(self) -> bool:
        """True if a trivial query answers."""
        return await self.connections.ping()

    def _indexed(self, job_id: str) -> bool:
        return job_id in self._index

    async def _watch_rows(self, db: aiosqlite.Connection, cols: str, ids: Sequence[str]) -> list[Any]:
        rows: list[Any] = []
        for chunk in chunks(ids):
            sql = f"SELECT {cols} FROM watches WHERE job_id IN ({marks(len(chunk))})"  # noqa: S608
            rows += await select(db, sql, chunk)
        return rows

    # -- watches --------------------------------------------------------------------------------------

    async def restore(self, now: float, first_due: Callable[[Watch], float]) -> int:
        """Page through unfinished watches by id, give each its first due time, write them back, re-index."""
        items: list[tuple[str, float]] = []
        async with self.connections.read():
            await self._behind.write_all(self.connections.hot_db(), self._indexed)
        async with self.connections.write() as db:
            last = ""
            while True:
                rows = await select(
                    db,
                    f"SELECT {WATCH_COLS} FROM watches"  # noqa: S608
                    " WHERE final IS NULL AND quarantined_at IS NULL AND job_id > ?"
                    " ORDER BY job_id LIMIT ?",
                    (last, _RESTORE_PAGE),
                )
                if not rows:
                    break
                page = [(first_due(watch_row(r)), r[0]) for r in rows]
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
            async with self.connections.write() as db:
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
            webhooks = None if reg.webhooks is None else dumps(list(reg.webhooks))
            callback = None if reg.callback is None else dumps(reg.callback.to_dict())
            inserts.append(
                (
                    reg.job_id,
                    reg.workspace,
                    int(reg.source),
                    dumps(reg.labels),
                    webhooks,
                    reg.max_watch_s,
                    now,
                    now,
                    callback,
                )
            )
        await db.executemany(
            "INSERT INTO watches (job_id, workspace, sources, labels, webhooks, max_watch_s, registered_at,"
            " next_poll_at, callback) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            inserts,
        )
        await db.executemany("UPDATE watches SET sources = sources | ? WHERE job_id = ?", merges)
        return results, [row[0] for row in inserts]

    async def sync_source_range(
        self, source: Source, regs: Regs, lo: Bound, hi: Bound, now: float, *, remove: bool = True
    ) -> SyncResult:
        """Sync `source` over the id range `(lo, hi]` in one write transaction (the primary key's range)."""
        bit = int(source)
        wanted = range_wanted(regs, lo, hi)
        where, params = "sources & ?", [bit, *(b for b in (lo, hi) if b is not None)]
        where += "" if lo is None else " AND job_id > ?"
        where += "" if hi is None else " AND job_id <= ?"
        async with self.connections.write() as db:
            have = {
                r[0]: (r[1], r[2])
                for r in await select(db, f"SELECT job_id, sources, final FROM watches WHERE {where}", params)  # noqa: S608
            }
            joining = [replace(r, source=source) for j, r in wanted.items() if j not in have]
            _, created = await self._register(db, joining, now)
            leaving = [j for j in have if j not in wanted] if remove else []
            gone = [j for j in leaving if have[j][0] == bit and have[j][1] is None]
            await db.executemany(
                "UPDATE watches SET sources = sources & ? WHERE job_id = ?", [(~bit, j) for j in leaving]
            )
            # As `delete_watch`: the watch goes with its events, except those still to deliver or replay.
            await self._drop_events(db, gone, keep=("pending", "dead"))
            for chunk in chunks(gone):
                await db.execute(f"DELETE FROM watches WHERE job_id IN ({marks(len(chunk))})", chunk)  # noqa: S608
        for jid in created:
            self._index.put(jid, now)
        for jid in gone:
            self._index.discard(jid)
            self._behind.pop(jid)
        waiting = 0 if remove else sum(1 for j in have if j not in wanted)
        return SyncResult(added=len(joining), removed=len(leaving), waiting=waiting)

    async def delete_watch(self, job_id: str) -> bool:
        """Delete the watch and its fully delivered events; pending and dead deliveries stay."""
        async with self.connections.write() as db:
            cur = await db.execute("DELETE FROM watches WHERE job_id = ?", (job_id,))
            deleted = cur.rowcount > 0
            if deleted:
                await self._drop_events(db, [job_id], keep=("pending", "dead"))
        if deleted:
            self._index.discard(job_id)
            self._behind.pop(job_id)
        return deleted

    async def _drop_events(
        self, db: aiosqlite.Connection, job_ids: Sequence[str], keep: tuple[str, ...]
    ) -> None:
        """Delete the jobs' events and their deliveries, except events with a delivery in a `keep` state."""
        states = marks(len(keep))
        for chunk in chunks(job_ids):
            ids = marks(len(chunk))
            await db.execute(
                "DELETE FROM deliveries WHERE event_id IN (SELECT e.id FROM events e"  # noqa: S608
                f" WHERE e.job_id IN ({ids}) AND NOT EXISTS (SELECT 1 FROM deliveries k"
                f" WHERE k.event_id = e.id AND k.state IN ({states})))",
                (*chunk, *keep),
            )
            # What is left with a delivery is exactly what must stay.
            await db.execute(
                f"DELETE FROM events WHERE job_id IN ({ids})"  # noqa: S608
                " AND NOT EXISTS (SELECT 1 FROM deliveries k WHERE k.event_id = events.id)",
                chunk,
            )

    async def get_watch(self, job_id: str) -> Watch | None:
        """One watch by id."""
        async with self.connections.read() as db:
            rows = await self._watch_rows(db, WATCH_COLS, [job_id])
        return self._behind.latest(watch_row(rows[0])) if rows else None

    async def _list_watches(self, query: WatchQuery) -> WatchPage:
        """Watches ordered by job id after `cursor`; the label filter reads the JSON column row by row."""
        where, params = ["job_id > ?"], [query.cursor or ""]
        if query.status is not None:
            where.append(f"{LIST_STATUS_SQL} = ?")
            params.append(query.status)
        if query.label is not None:
            # json_each rather than a JSON path: a key may contain dots, quotes or brackets.
            where.append(
                "EXISTS (SELECT 1 FROM json_each(watches.labels) l WHERE l.key = ? AND l.value = ?"
                " AND l.type = 'text')"
            )
            params += [query.label[0], query.label[1]]
        if query.workspaces is not None:
            where.append(f"workspace IN ({marks(len(query.workspaces))})")
            params += query.workspaces
        sql = f"SELECT {WATCH_COLS} FROM watches WHERE {' AND '.join(where)} ORDER BY job_id LIMIT ?"  # noqa: S608
        async with self.connections.read() as db:
            rows = await select(db, sql, (*params, query.limit + 1))
        page = [self._behind.latest(watch_row(r)) for r in rows[: query.limit]]
        return WatchPage(page, page[-1].job_id if len(rows) > query.limit and page else None)

    async def claim_due(self, now: float, limit: int, lease_s: float) -> list[Watch]:
        """Pop due ids from the index; a deferred quiet poll is its own latest state, the rest are read
        from the table (chunked `IN` queries on the hot connection)."""
        behind = self._behind
        async with self.connections.read():
            claimed = self._index.claim(now, limit, lease_s)
            try:
                hot = self.connections.hot_db()
                rows: list[Any] = []
                ids = [j for j, _ in claimed if j not in behind]
                for chunk in chunks(ids):
                    sql = f"SELECT {WATCH_COLS} FROM watches WHERE job_id IN ({marks(len(chunk))})"  # noqa: S608
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
                w = entry.watch.copy()
            else:
                row = by_id.get(jid)
                # Gone, finished or quarantined behind the index's back.
                if row is None or row[8] is not None or row[19] is not None:
                    self._index.unclaim(jid, token)
                    continue
                w = watch_row(row)
            w.lease = token
            out.append(w)
        return out

    async def save_polls(self, polls: Sequence[SavedPoll]) -> list[bool]:
        """One transaction: fenced watch updates, de-duplicated events, one delivery per event and webhook.

        A quiet poll (no event, polling goes on) is written behind (`WriteBehind`), with a later save; polls
        with events or a final state are written in this transaction. If the transaction fails, nothing of
        it counts: the claims stay, deferred polls stay deferred, and the caller saves the same batch again
        once the store is back (no event is lost).
        """
        ok: list[bool] = []
        taken: set[str] = set()
        updates: list[tuple[Any, ...]] = []
        events: dict[str, tuple[Event, tuple[str, ...], Callback | None]] = {}
        superseded: dict[str, Deferred] = {}  # deferred polls this save writes over
        holds_lease = self._holds_lease
        behind = self._behind
        defer = behind.delay_s > 0
        clock = self._clock.monotonic()
        for saved in polls:
            w = saved.watch
            jid = w.job_id
            fresh = jid not in taken and holds_lease(w)
            ok.append(fresh)
            if not fresh:
                continue
            taken.add(jid)
            if defer and not saved.events and w.final is None:
                behind.defer(w, clock)
                continue
            displaced = behind.pop(jid)
            if displaced is not None:
                superseded[jid] = displaced
            updates.append(save_row(w))
            for new in saved.events:
                events.setdefault(new.event.id, (new.event, new.webhooks, w.callback))
        flush = behind.due(clock)
        if updates or flush:
            try:
                async with self.connections.read():
                    hot = self.connections.hot_db()
                    await begin_immediate(hot)
                    behind.commit(hot, updates, events, FLUSH_BATCH if flush else 0, self._indexed)
            except StoreError as e:
                behind.restore(superseded)
                if isinstance(e, StoreOutage):
                    self.connections.upkeep.failed(e)
                raise
            self.connections.upkeep.wrote(batch=True)
        for saved, fresh in zip(polls, ok, strict=True):
            if fresh:
                self._reindex(saved.watch)
        return ok

    async def note_failure(
        self, watch: Watch, reason: str, now: float, retry_at: float, quarantine_after: int
    ) -> FailureNoted:
        """Count the failure in the row (only the quarantine columns and the due time are written)."""
        jid = watch.job_id
        if not self._holds_lease(watch):
            return FailureNoted(kept=False)
        async with self.connections.write() as db:
            rows = await select(
                db,
                "UPDATE watches SET failures = failures + 1, quarantine_reason = ?, next_poll_at = ?,"
                " quarantined_at = CASE WHEN failures + 1 >= ? THEN ? END"
                " WHERE job_id = ? RETURNING failures",
                (reason, retry_at, quarantine_after, now, jid),
            )
        if not rows or not self._holds_lease(watch):
            return FailureNoted(kept=False)  # deleted (or claimed again) while we waited for the lock
        failures = int(rows[0][0])
        quarantined = failures >= quarantine_after
        if quarantined:
            # Deferred polling state of a watch whose writes fail is the likeliest poison: drop it.
            self._behind.pop(jid)
        self._reindex_after_failure(jid, quarantined, retry_at)
        return FailureNoted(True, failures, quarantined=quarantined)

    async def release_quarantine(self, job_id: str, now: float) -> bool:
        """Clear the quarantine and the failure count; an unfinished watch is due at `now`."""
        async with self.connections.write() as db:
            rows = await select(
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
        """Delete finished watches older than `before` that have no pending delivery, with their events."""
        async with self.connections.write() as db:
            rows = await select(db, FINISHED_SETTLED.format(before="?"), (before,))
            ids = [r[0] for r in rows]
            await self._drop_events(db, ids, keep=("pending",))
            for chunk in chunks(ids):
                await db.execute(f"DELETE FROM watches WHERE job_id IN ({marks(len(chunk))})", chunk)  # noqa: S608
        return len(ids)
