"""Write-behind of quiet polls: a poll that changed nothing durable waits in memory to be written.

A quiet poll (no event, polling goes on) changes only polling state that a crash may lose: the restart
re-polls those watches within `initial_interval_s` anyway, and no event depends on it. So it is kept here
and written with a later save, at most `delay_s` after the first unwritten one, or at `close`. A watch
polled every second is then written every few seconds, and its claims need no read. Reads of the API see
the deferred state (`latest`).
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from watcher.containment import describe
from watcher.models import Callback, Event, Watch
from watcher.store.sqlite.health import begin_immediate, is_poison, rollback
from watcher.store.sqlite.sql import SAVE_WATCH, insert_events, save_row

log = structlog.get_logger("watcher.store")

# Quiet polls (no event, not final) are written behind: within this many seconds of the first one that is
# not on disk yet, and every one of them at `close` (see `SQLiteStore.save_polls`).
WRITE_BEHIND_S = 5.0
# Deferred watches written per save: the oldest first, so a backlog drains over several saves instead of
# holding the event loop for one long transaction.
FLUSH_BATCH = 512
# More deferred watches than this are written at once, whatever their age (bounds the memory they hold).
MAX_DEFERRED = 50_000

Rows = list[tuple[Any, ...]]
NewEvents = dict[str, tuple[Event, tuple[str, ...], Callback | None]]


@dataclass(slots=True)
class Deferred:
    """A watch's latest quiet poll, not written yet."""

    since: float  # monotonic time of its first poll that is not on disk
    watch: Watch


def overlay(stored: Watch, newer: Watch) -> Watch:
    """`stored` (read from the table) with the polling state of a deferred save."""
    w = newer.copy()
    w.sources = stored.sources  # the only column that changes outside polling (register, sync_source)
    w.lease = 0
    return w


class WriteBehind:
    """The deferred quiet polls by job id; insertion order is the order they became due for writing."""

    def __init__(self, delay_s: float = WRITE_BEHIND_S) -> None:
        self.delay_s = delay_s  # 0 writes every save at once
        self._entries: dict[str, Deferred] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._entries

    def get(self, job_id: str) -> Deferred | None:
        """The deferred poll of `job_id`, if it has one."""
        return self._entries.get(job_id)

    def defer(self, watch: Watch, now: float) -> None:
        """Keep `watch` as its latest unwritten state; the wait counts from its first unwritten poll."""
        entry = self._entries.get(watch.job_id)
        if entry is None:
            self._entries[watch.job_id] = Deferred(now, watch)
        else:
            entry.watch = watch

    def pop(self, job_id: str) -> Deferred | None:
        """Forget `job_id`'s deferred poll (written now, deleted, or poison); the entry it had."""
        return self._entries.pop(job_id, None)

    def restore(self, entries: Mapping[str, Deferred]) -> None:
        """Put back entries that a failed write took, unless a newer one came meanwhile."""
        for job_id, entry in entries.items():
            self._entries.setdefault(job_id, entry)

    def clear(self) -> None:
        """Forget every deferred poll."""
        self._entries.clear()

    def latest(self, stored: Watch) -> Watch:
        """A watch read from the table, with its deferred polling state if it has one."""
        entry = self._entries.get(stored.job_id)
        return stored if entry is None else overlay(stored, entry.watch)

    def due(self, now: float) -> bool:
        """True when the oldest deferred poll has waited `delay_s`, or too many are waiting."""
        if not self._entries:
            return False
        oldest = next(iter(self._entries.values()))
        return now - oldest.since >= self.delay_s or len(self._entries) > MAX_DEFERRED

    def commit(
        self,
        hot: sqlite3.Connection,
        updates: Rows,
        events: NewEvents,
        deferred: int,
        indexed: Callable[[str], bool],
    ) -> None:
        """The transaction the caller began: `updates`, `events`, and the `deferred` oldest deferred watches,
        which stay deferred if it fails (unless the watch left the index meanwhile: deleted or finished)."""
        taken = {jid: self._entries.pop(jid) for jid in list(itertools.islice(self._entries, deferred))}
        try:
            # Sorted by id: neighbouring keys share pages.
            hot.executemany(SAVE_WATCH, updates + [save_row(taken[j].watch) for j in sorted(taken)])
            if events:
                insert_events(hot, events)
            hot.execute("COMMIT")
        except BaseException as exc:
            rollback(hot)
            self.restore({jid: entry for jid, entry in taken.items() if indexed(jid)})
            if not taken or not is_poison(exc):
                raise
            # One deferred row the store refuses (its data, not the store being out) must not fail this
            # save, nor every later one that would carry it: write this save's own rows alone, then the
            # deferred ones one by one. The write lock was ours a moment ago, so waiting for it is short.
            hot.execute("BEGIN IMMEDIATE")
            self.commit(hot, updates, events, 0, indexed)
            self._write_singly(hot, list(taken))

    async def write_all(self, hot: sqlite3.Connection, indexed: Callable[[str], bool]) -> None:
        """Write every deferred poll now (at `close`, and before a `restore`)."""
        while self._entries:
            await begin_immediate(hot)
            self.commit(hot, [], {}, MAX_DEFERRED, indexed)

    def _write_singly(self, hot: sqlite3.Connection, job_ids: list[str]) -> None:
        """Write deferred watches one transaction each; drop the deferred state of a row that is refused.

        Only polling state a crash may lose anyway is dropped; the watch stays due, and if its rows keep
        being refused, the next save that carries an event fails in the scheduler, which quarantines it.
        """
        for jid in job_ids:
            entry = self._entries.pop(jid, None)
            if entry is None:
                continue
            hot.execute("BEGIN IMMEDIATE")
            try:
                hot.execute(SAVE_WATCH, save_row(entry.watch))
                hot.execute("COMMIT")
            except BaseException as exc:
                rollback(hot)
                if not is_poison(exc):
                    self._entries.setdefault(jid, entry)
                    raise
                log.error("store.write_behind_dropped", job_id=jid, error=describe(exc))
