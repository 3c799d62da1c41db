"""The declarative watch-list file (SPEC §5): parse it, and keep the store's FILE source equal to it.

One job id per line, optionally followed by a workspace; `#` starts a comment. A bad line is reported with
its number and skipped, never fatal. The reloader re-reads the file when its (mtime, size, inode) changes,
on SIGHUP (`trigger`) and at start-up. A file that cannot be read keeps the last good list: a vanished or
garbled file must never unwatch everything (an operator empties the file to unwatch all).

Settling: a file written in place (truncated, then written in parts) is read half-written now and then.
Additions apply at once, but removals wait until the file has kept the same signature for `settle_s`:
until then the ids it lost stay watched, so one that comes back keeps its `registered_at` and its counts.
A file replaced atomically (a rename: a new inode) is complete by construction and applies at once.

Size: the file is streamed in a worker thread into one int per entry (`watchlist_file.scan`), and the store
is synced `CHUNK` ids at a time in id order (`Store.sync_source_range`), each chunk one short transaction.
Memory stays near 60 bytes an entry, and the event loop (the API, `/healthz`) keeps running during the
reload of a file of a million lines. Bad lines are logged one by one up to `MAX_PROBLEMS`, then counted.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import structlog

from watcher.clock import Clock
from watcher.errors import StoreUnavailable
from watcher.health import StoreHealth
from watcher.loop import StoreLoop
from watcher.metrics import Metrics
from watcher.models import Registration, Source
from watcher.sources.watchlist_file import (
    Scan,
    Signature,
    WatchlistProblem,
    parse_watchlist,
    scan,
)
from watcher.store.base import Store, SyncResult

__all__ = ["CHUNK", "WatchlistProblem", "WatchlistReloader", "parse_watchlist"]

log = structlog.get_logger(__name__)

CHUNK = 5000  # ids synced per store call (one short transaction each)


def _take(entries: Iterator[Registration], n: int) -> list[Registration]:
    return list(itertools.islice(entries, n))


class WatchlistReloader(StoreLoop):
    """Keeps the store's FILE-sourced watches equal to the watch-list file."""

    name = "watchlist"

    def __init__(
        self,
        path: Path,
        store: Store,
        *,
        default_workspace: str,
        workspaces: Collection[str],
        clock: Clock,
        reload_interval_s: float,
        metrics: Metrics,
        on_change: Callable[[], None] | None = None,
        health: StoreHealth | None = None,
        settle_s: float = 0.0,
    ) -> None:
        super().__init__(store, metrics, clock, health=health)
        self._path = path
        self._default_workspace = default_workspace
        self._workspaces = frozenset(workspaces)
        self._interval = reload_interval_s
        self._on_change = on_change
        self._settle_s = settle_s
        self._applied: Signature | None = None  # the file version the store reflects, removals included
        self._seen: Signature | None = None  # the file version read last
        self._seen_at = 0.0  # when that version was first read
        self._failure: str | None = None  # the last failure reported, so a lasting one is logged once
        self._triggered = asyncio.Event()

    async def reload(self, force: bool = False) -> bool:
        """Re-read the file if it changed (or if forced) and sync the store; True if the store was synced.

        An unreadable file keeps the last good list and returns False; the failure is logged and counted
        once per distinct failure (every time when forced), not at every interval.
        """
        settled = self._seen is not None and self._clock.now() - self._seen_at >= self._settle_s
        # The version read last is re-read once it has settled, to apply its removals.
        known = None if force or (settled and self._applied != self._seen) else self._seen
        try:
            snap = await asyncio.to_thread(
                scan, self._path, known, self._default_workspace, sorted(self._workspaces)
            )
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self._report_failure(f"{type(e).__name__}: {reason}", force)
            return False
        if snap.changing:
            log.info("watchlist.changing", path=str(self._path))
            return False
        if snap.runs is None:
            return False
        now = self._clock.now()
        seen, seen_at = self._seen, self._seen_at
        fresh = snap.signature != seen
        if fresh:
            # A new inode is an atomic replacement: complete, so its removals need not wait.
            replaced = seen is not None and snap.signature[2] != seen[2]
            seen, seen_at = snap.signature, now
            settled = replaced or self._settle_s <= 0
        report = fresh or force  # not again when a version read before settles
        shown = self._show_problems(snap, 0) if report else 0
        result, entries = await self._sync(snap, now, remove=settled)
        if report:
            self._show_problems(snap, shown)
            if snap.problem_count > len(snap.problems):
                log.warning(
                    "watchlist.bad_lines_not_shown",
                    path=str(self._path),
                    count=snap.problem_count - len(snap.problems),
                    shown=len(snap.problems),
                )
        if settled:
            # Only now does the store reflect this version: a failed sync is retried at the next interval.
            self._applied = snap.signature
        # Only now is this version read: had the store failed, the next round would read it again.
        self._seen, self._seen_at = seen, seen_at
        self._failure = None
        log.info(
            "watchlist.reloaded",
            path=str(self._path),
            entries=entries,
            added=result.added,
            removed=result.removed,
            problems=snap.problem_count,
            **({} if settled else {"removals_waiting": result.waiting, "settle_s": self._settle_s}),
        )
        if result.added and self._on_change is not None:
            self._on_change()
        return True

    async def _sync(self, snap: Scan, now: float, *, remove: bool) -> tuple[SyncResult, int]:
        """Sync the store's FILE source with the scanned entries, `CHUNK` ids at a time in id order.

        Each chunk is one store call over the id range from the previous chunk's last id to its own (the
        last chunk's range is open above), so ids the file dropped are found range by range without
        holding every id in memory. Without `remove` they are only counted as waiting. Merging the sorted
        runs happens in a worker thread; the event loop only passes each chunk to the store.
        """
        entries = snap.entries()
        added = removed = waiting = count = 0
        lo: str | None = None
        while True:
            regs = await asyncio.to_thread(_take, entries, CHUNK)
            count += len(regs)
            hi = regs[-1].job_id if len(regs) == CHUNK else None
            part = await self._store.sync_source_range(Source.FILE, regs, lo, hi, now, remove=remove)
            added, removed, waiting = added + part.added, removed + part.removed, waiting + part.waiting
            if hi is None:
                return SyncResult(added, removed, waiting), count
            lo = hi

    def _show_problems(self, snap: Scan, start: int) -> int:
        """Log the kept problems from `start` on (duplicates are found while syncing); how many are kept."""
        for p in snap.problems[start:]:
            log.warning("watchlist.bad_line", path=str(self._path), line=p.line, reason=p.message)
        return len(snap.problems)

    def _report_failure(self, reason: str, force: bool) -> None:
        if reason == self._failure and not force:
            return
        self._failure = reason
        self._metrics.watchlist_errors.inc()
        log.warning("watchlist.unreadable", path=str(self._path), reason=reason, kept="last good list")

    def trigger(self) -> None:
        """Ask for a forced reload as soon as possible (SIGHUP); safe to call from a signal handler."""
        self._triggered.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Reload at start, then every `reload_interval_s` or at `trigger()`, until `stop` is set.

        A store outage is waited out with backoff and the reload tried again (forced if it was); another
        failed sync is logged and counted, and retried at the next round: the loop lives on.
        """
        force = True
        while not stop.is_set():
            try:
                await self.reload(force=force)
                self._health.ok(self.name)
            except StoreUnavailable as exc:
                await self._health.wait_out(self.name, exc, stop)
                continue
            except Exception:
                self._contained()
                log.exception("watchlist.reload_failed", path=str(self._path))
            force = await self._wait(stop)

    async def _wait(self, stop: asyncio.Event) -> bool:
        """Sleep until the interval passes, a trigger or a stop; True if it was a trigger."""
        waiters = {
            asyncio.ensure_future(self._clock.sleep(self._interval)),
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(self._triggered.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            # Reap the cancelled waiters so none is left pending when the loop closes.
            await asyncio.gather(*waiters, return_exceptions=True)
        triggered = self._triggered.is_set()
        self._triggered.clear()
        return triggered
