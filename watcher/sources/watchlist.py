"""The declarative watch-list file (SPEC §5): parse it, and keep the store's FILE source equal to it.

One job id per line, optionally followed by a workspace; `#` starts a comment. A bad line is reported with
its number and skipped, never fatal. The reloader re-reads the file when its (mtime, size, inode) changes,
on SIGHUP (`trigger`) and at start-up. A file that cannot be read keeps the last good list: a vanished or
garbled file must never unwatch everything (an operator empties the file to unwatch all).

Settling: a file written in place (truncated, then written in parts) is read half-written now and then.
Additions apply at once, but removals wait until the file has kept the same signature for `settle_s`:
until then the ids it lost stay watched, so one that comes back keeps its `registered_at` and its counts.
A file replaced atomically (a rename: a new inode) is complete by construction and applies at once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import structlog

from watcher.clock import Clock
from watcher.errors import StoreUnavailable
from watcher.health import StoreHealth
from watcher.ids import is_uuid
from watcher.loop import StoreLoop
from watcher.metrics import Metrics
from watcher.models import Registration, Source
from watcher.store.base import RegisterResult, Store

log = structlog.get_logger(__name__)

# (st_mtime_ns, st_size, st_ino): an edit, a truncation or an atomic rename changes at least one of them.
_Signature = tuple[int, int, int]


@dataclass(frozen=True)
class WatchlistProblem:
    """A line of the watch-list that was skipped, and why."""

    line: int  # 1-based, as an editor shows it
    message: str


def parse_watchlist(
    text: str, default_workspace: str, workspaces: Collection[str]
) -> tuple[list[Registration], list[WatchlistProblem]]:
    """Parse a watch-list into FILE registrations (in file order) and the problems of the lines skipped.

    A line is `<job id> [workspace]`; the id must be a hyphenated UUID and comes back lower-case. A
    duplicate id keeps its first line. Never raises, whatever the text.
    """
    regs: list[Registration] = []
    problems: list[WatchlistProblem] = []
    first_line: dict[str, int] = {}
    # Split on "\n" only, so that line numbers match what editors and `sed -n Np` show.
    for number, raw in enumerate(text.split("\n"), start=1):
        tokens = raw.split("#", 1)[0].split()
        if not tokens:
            continue
        if len(tokens) > 2:
            problems.append(
                WatchlistProblem(number, f"expected '<job id> [workspace]', got {len(tokens)} words")
            )
            continue
        if not is_uuid(tokens[0]):
            problems.append(WatchlistProblem(number, f"not a job id (UUID): {tokens[0][:64]!r}"))
            continue
        job_id = tokens[0].lower()
        workspace = tokens[1] if len(tokens) == 2 else default_workspace
        if workspace not in workspaces:
            problems.append(WatchlistProblem(number, f"unknown workspace {workspace[:64]!r}"))
            continue
        if job_id in first_line:
            problems.append(WatchlistProblem(number, f"duplicate of line {first_line[job_id]}, ignored"))
            continue
        first_line[job_id] = number
        regs.append(Registration(job_id=job_id, workspace=workspace, source=Source.FILE))
    return regs, problems


@dataclass(frozen=True)
class _Snapshot:
    """One look at the file: its signature, and its text unless unchanged or changing while read."""

    signature: _Signature
    text: str | None
    changing: bool = False


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _read(path: Path, known: _Signature | None) -> _Snapshot:
    """Stat the file and read it unless its signature is `known` (blocking: run in a thread).

    `utf-8-sig` drops the BOM some editors write.
    """
    before = _signature(path.stat())
    if before == known:
        return _Snapshot(before, None)
    text = path.read_text(encoding="utf-8-sig")
    after = _signature(path.stat())
    if after != before:
        # A writer that does not rename atomically may be half-way through: read it once it settles.
        return _Snapshot(after, None, changing=True)
    return _Snapshot(after, text)


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
        self._applied: _Signature | None = None  # the file version the store reflects, removals included
        self._seen: _Signature | None = None  # the file version read last
        self._seen_at = 0.0  # when that version was first read
        self._listed: set[str] | None = None  # ids the store has from the file, as far as known
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
            snap = await asyncio.to_thread(_read, self._path, known)
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self._report_failure(f"{type(e).__name__}: {reason}", force)
            return False
        if snap.changing:
            log.info("watchlist.changing", path=str(self._path))
            return False
        if snap.text is None:
            return False
        now = self._clock.now()
        seen, seen_at = self._seen, self._seen_at
        fresh = snap.signature != seen
        if fresh:
            # A new inode is an atomic replacement: complete, so its removals need not wait.
            replaced = seen is not None and snap.signature[2] != seen[2]
            seen, seen_at = snap.signature, now
            settled = replaced or self._settle_s <= 0
        regs, problems = parse_watchlist(snap.text, self._default_workspace, self._workspaces)
        for p in problems if fresh or force else ():  # not again when a version read before settles
            log.warning("watchlist.bad_line", path=str(self._path), line=p.line, reason=p.message)
        if settled:
            result = await self._store.sync_source(Source.FILE, regs, now)
            # Only now does the store reflect this version: a failed sync is retried at the next interval.
            self._applied, self._listed = snap.signature, {r.job_id for r in regs}
            added, removed, waiting = result.added, result.removed, 0
        else:
            added, waiting = await self._add_only(regs, now), None
            removed = 0
            if self._listed is not None:
                waiting = len(self._listed - {r.job_id for r in regs})
        # Only now is this version read: had the store failed, the next round would read it again.
        self._seen, self._seen_at = seen, seen_at
        self._failure = None
        log.info(
            "watchlist.reloaded",
            path=str(self._path),
            entries=len(regs),
            added=added,
            removed=removed,
            problems=len(problems),
            **({} if settled else {"removals_waiting": waiting, "settle_s": self._settle_s}),
        )
        if added and self._on_change is not None:
            self._on_change()
        return True

    async def _add_only(self, regs: list[Registration], now: float) -> int:
        """Register what the file lists and the store may lack, removing nothing; the ids newly watched."""
        new = regs if self._listed is None else [r for r in regs if r.job_id not in self._listed]
        results = await self._store.register(new, now) if new else []
        if self._listed is not None:
            self._listed.update(r.job_id for r in new)
        return sum(1 for r in results if r is RegisterResult.CREATED)

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
