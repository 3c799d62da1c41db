"""Tests of the watch-list reloader against real files and the in-memory store."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from tests.support.eventually import eventually
from watcher.devtools.clock import ManualClock
from watcher.errors import StoreError, StoreUnavailable
from watcher.metrics import Metrics
from watcher.models import Registration, Source
from watcher.sources.watchlist import WatchlistReloader
from watcher.store.base import RegisterResult, SyncResult
from watcher.store.memory import MemoryStore

A = "5135bfe3-b2c7-41f3-a44f-f4b58e7384df"
B = "b9eb98d0-2445-46a3-8107-4fcf243f85e4"
C = "6f8c7d9d-34e2-4f42-9f5d-8f3c5b16a6af"
INTERVAL = 5.0


class FlakyStore(MemoryStore):
    """A memory store whose next `failures` range syncs fail, as a database that is briefly down would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def sync_source_range(
        self,
        source: Source,
        regs: Sequence[Registration],
        lo: str | None,
        hi: str | None,
        now: float,
        *,
        remove: bool = True,
    ) -> SyncResult:
        """Fail while failures remain, then behave like the memory store."""
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("database is locked")
        return await super().sync_source_range(source, regs, lo, hi, now, remove=remove)


@dataclass
class Env:
    """A reloader on a temporary watch-list with everything a test inspects."""

    path: Path
    store: MemoryStore
    clock: ManualClock
    metrics: Metrics
    reloader: WatchlistReloader
    changes: list[int] = field(default_factory=list)

    def write(self, text: str) -> None:
        """Replace the file atomically, as a careful operator or a config manager does."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path)

    async def watched(self) -> dict[str, int]:
        """Unfinished watches and their source bits."""
        page = await self.store.list_watches(limit=1000)
        return {w.job_id: w.sources for w in page.watches}

    def errors(self) -> float:
        """The reload error counter."""
        value = self.metrics.registry.get_sample_value("watcher_watchlist_reload_errors_total")
        return value or 0.0


def make_env(tmp_path: Path, store: MemoryStore | None = None, settle_s: float = 0.0) -> Env:
    """Build the reloader around `tmp_path/watchlist.txt` (not created)."""
    store = store or MemoryStore()
    clock = ManualClock()
    metrics = Metrics(CollectorRegistry())
    changes: list[int] = []
    path = tmp_path / "watchlist.txt"
    reloader = WatchlistReloader(
        path,
        store,
        default_workspace="acme",
        workspaces=("acme", "beta"),
        clock=clock,
        reload_interval_s=INTERVAL,
        metrics=metrics,
        on_change=lambda: changes.append(1),
        settle_s=settle_s,
    )
    return Env(path, store, clock, metrics, reloader, changes)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    """A reloader on an empty temporary directory."""
    return make_env(tmp_path)


def events(logs: Sequence[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    """The captured log entries called `name`."""
    return [e for e in logs if e["event"] == name]


class TestReload:
    """One reload syncs the FILE source with the file, and never loses the last good list."""

    async def test_adds_and_removes_lines(self, env: Env) -> None:
        """Added ids are registered, removed ids stop being watched, and the scheduler is woken."""
        env.write(f"{A}\n{B} beta\n")
        with capture_logs() as logs:
            assert await env.reloader.reload()
        assert await env.watched() == {A: Source.FILE, B: Source.FILE}
        assert (await env.store.get_watch(B)).workspace == "beta"  # type: ignore[union-attr]
        assert env.changes == [1]
        [done] = events(logs, "watchlist.reloaded")
        assert (done["entries"], done["added"], done["removed"], done["problems"]) == (2, 2, 0, 0)

        env.write(f"{B} beta\n")
        with capture_logs() as logs:
            assert await env.reloader.reload()
        assert await env.watched() == {B: Source.FILE}
        assert env.changes == [1], "a removal alone does not wake the scheduler"
        [done] = events(logs, "watchlist.reloaded")
        assert (done["added"], done["removed"]) == (0, 1)

    async def test_in_place_edit_is_seen(self, env: Env) -> None:
        """A file rewritten in place (same inode) is reloaded when its size or mtime changes."""
        env.path.write_text(f"{A}\n")
        assert await env.reloader.reload()
        env.path.write_text(f"{A}\n{C}\n")
        assert await env.reloader.reload()
        assert set(await env.watched()) == {A, C}

    async def test_unchanged_file_is_not_reapplied_unless_forced(self, env: Env) -> None:
        """Without a change nothing is synced; a forced reload syncs again (and repairs drift)."""
        env.write(f"{A}\n")
        assert await env.reloader.reload()
        await env.store.delete_watch(A)
        assert not await env.reloader.reload()
        assert await env.watched() == {}
        assert await env.reloader.reload(force=True)
        assert await env.watched() == {A: Source.FILE}

    async def test_bad_lines_are_logged_and_skipped(self, env: Env) -> None:
        """Each bad line is logged with its number and reason; good lines still apply."""
        env.write(f"{A}\nnonsense\n{B} gamma\n")
        with capture_logs() as logs:
            assert await env.reloader.reload()
        assert await env.watched() == {A: Source.FILE}
        bad = events(logs, "watchlist.bad_line")
        assert [(e["line"], e["path"]) for e in bad] == [(2, str(env.path)), (3, str(env.path))]
        assert "gamma" in bad[1]["reason"]
        assert events(logs, "watchlist.reloaded")[0]["problems"] == 2

    @pytest.mark.parametrize("breakage", ["invalid_utf8", "deleted", "directory"])
    async def test_unreadable_file_keeps_the_last_good_list(self, env: Env, breakage: str) -> None:
        """Garbled, vanished or replaced-by-a-directory: the watches stay, the failure is logged once."""
        env.write(f"{A}\n{B}\n")
        assert await env.reloader.reload()
        env.path.unlink()
        if breakage == "invalid_utf8":
            env.path.write_bytes(f"{A}\n".encode() + b"\xff\xfe broken\n")
        elif breakage == "directory":
            env.path.mkdir()
        with capture_logs() as logs:
            assert not await env.reloader.reload()
            assert not await env.reloader.reload()
        assert await env.watched() == {A: Source.FILE, B: Source.FILE}
        [warning] = events(logs, "watchlist.unreadable")
        assert warning["path"] == str(env.path)
        assert warning["log_level"] == "warning"
        assert env.errors() == 1.0, "a lasting failure is counted once, not at every interval"

        if breakage == "directory":
            env.path.rmdir()
        else:
            env.path.unlink(missing_ok=True)
        env.write(f"{B}\n")
        assert await env.reloader.reload()
        assert await env.watched() == {B: Source.FILE}

    async def test_missing_file_at_start_watches_nothing_yet(self, env: Env) -> None:
        """A watch-list that does not exist yet is a warning, not an error that unwatches API jobs."""
        await env.store.register([Registration(C, "acme", Source.API)], env.clock.now())
        with capture_logs() as logs:
            assert not await env.reloader.reload(force=True)
        assert events(logs, "watchlist.unreadable")[0]["reason"].startswith("FileNotFoundError")
        assert await env.watched() == {C: Source.API}
        env.write(f"{A}\n")
        assert await env.reloader.reload()
        assert await env.watched() == {A: Source.FILE, C: Source.API}

    async def test_api_registration_survives_removal_from_the_file(self, env: Env) -> None:
        """An id registered by the API as well keeps being watched when the file drops it."""
        env.write(f"{A}\n{B}\n")
        assert await env.reloader.reload()
        await env.store.register([Registration(A, "acme", Source.API)], env.clock.now())
        env.write("# nothing to watch from the file\n")
        assert await env.reloader.reload()
        assert await env.watched() == {A: Source.API}


SETTLE = 2 * INTERVAL


def write_in_place(path: Path, text: str) -> None:
    """Rewrite the file in place: truncate it and write `text`, keeping the inode."""
    with path.open("r+" if path.exists() else "w", encoding="utf-8") as f:
        f.truncate(0)
        f.write(text)


class TestSettle:
    """Removals wait until an in-place file has settled; additions and atomic replacements do not."""

    @pytest.fixture
    def env(self, tmp_path: Path) -> Env:
        """A reloader whose removals wait `SETTLE` seconds of the manual clock."""
        return make_env(tmp_path, settle_s=SETTLE)

    async def test_a_file_written_in_parts_unwatches_nothing(self, env: Env) -> None:
        """Truncated, then written in chunks, reloaded in between: no id it still lists is unwatched, and
        each keeps its registered_at and poll count."""
        full = f"{A}\n{B} beta\n{C}\n"
        env.write(full)
        assert await env.reloader.reload()
        await env.clock.advance(SETTLE)
        assert await env.reloader.reload()  # the first version settles
        claimed = await env.store.claim_due(env.clock.now(), 10, 30.0)  # a poll counted for each
        assert len(claimed) == 3
        before = {w.job_id: w for w in (await env.store.list_watches(limit=10)).watches}
        with capture_logs() as logs:
            write_in_place(env.path, "")
            assert await env.reloader.reload()
            for end in range(1, len(full) + 1, 17):
                await env.clock.advance(1.0)
                write_in_place(env.path, full[:end])
                await env.reloader.reload()
            await env.clock.advance(1.0)
            write_in_place(env.path, full)
            await env.reloader.reload()
            await env.clock.advance(SETTLE)
            assert await env.reloader.reload()  # settled: applied in full, nothing to remove
        after = {w.job_id: w for w in (await env.store.list_watches(limit=10)).watches}
        assert set(after) == {A, B, C}
        for job_id, w in after.items():
            assert (w.registered_at, w.polls, w.lease) == (
                before[job_id].registered_at,
                before[job_id].polls,
                before[job_id].lease,
            ), job_id
        assert all(e["removed"] == 0 for e in events(logs, "watchlist.reloaded"))
        waiting = [e["removals_waiting"] for e in events(logs, "watchlist.reloaded") if "settle_s" in e]
        assert waiting and max(waiting) == 3  # the empty file: all three waited, none left

    async def test_a_removal_applies_once_the_file_has_settled(self, env: Env) -> None:
        """An id dropped in place stays watched for `settle_s`, then is unwatched."""
        write_in_place(env.path, f"{A}\n{B}\n")
        assert await env.reloader.reload()
        await env.clock.advance(SETTLE)
        await env.reloader.reload()
        write_in_place(env.path, f"{A}\n")
        assert await env.reloader.reload()
        assert set(await env.watched()) == {A, B}
        await env.clock.advance(SETTLE / 2)
        assert not await env.reloader.reload()
        assert set(await env.watched()) == {A, B}
        await env.clock.advance(SETTLE / 2)
        with capture_logs() as logs:
            assert await env.reloader.reload()
        assert set(await env.watched()) == {A}
        [done] = events(logs, "watchlist.reloaded")
        assert (done["removed"], "settle_s" in done) == (1, False)
        assert not events(logs, "watchlist.bad_line")

    async def test_additions_apply_at_once(self, env: Env) -> None:
        """An id added in place is watched at the first reload, before the file settles."""
        write_in_place(env.path, f"{A}\n")
        assert await env.reloader.reload()
        write_in_place(env.path, f"{A}\n{C}\n")
        assert await env.reloader.reload()
        assert set(await env.watched()) == {A, C}
        assert len(env.changes) == 2

    async def test_an_atomic_replacement_applies_removals_at_once(self, env: Env) -> None:
        """A file renamed over the old one is complete: its removals do not wait."""
        env.write(f"{A}\n{B}\n")
        assert await env.reloader.reload()
        env.write(f"{B}\n")
        assert await env.reloader.reload()
        assert set(await env.watched()) == {B}


@contextlib.asynccontextmanager
async def looping(env: Env) -> AsyncIterator[asyncio.Event]:
    """The reloader's loop running on the manual clock; stopped (and checked to stop) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(env.reloader.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5.0)


async def parked(env: Env) -> None:
    """Wait until the loop waits for the manual clock: nothing happens then until it moves (or a trigger)."""
    await eventually(lambda: env.clock.sleepers == 1, 10, "the reload loop waiting for its interval")


class TestRun:
    """The loop reloads at start, at every interval and on trigger, survives failures and stops."""

    async def test_reloads_at_start_and_on_interval(self, env: Env) -> None:
        """The initial list is applied at once; a later edit is picked up after one interval."""
        env.write(f"{A}\n")
        async with looping(env):
            await eventually(lambda: _has(env, {A}))
            env.write(f"{A}\n{B}\n")
            await parked(env)
            assert set(await env.watched()) == {A}, "no reload before the interval has passed"
            await env.clock.advance(INTERVAL)
            await eventually(lambda: _has(env, {A, B}))

    async def test_trigger_forces_a_reload(self, env: Env) -> None:
        """trigger() (SIGHUP) reloads at once, even when the file looks unchanged."""
        env.write(f"{A}\n")
        async with looping(env):
            await eventually(lambda: _has(env, {A}))
            await env.store.delete_watch(A)  # drift that only a forced reload repairs
            await parked(env)
            assert await env.watched() == {}
            env.reloader.trigger()
            await eventually(lambda: _has(env, {A}))

    async def test_stop_ends_the_loop_promptly(self, env: Env) -> None:
        """Setting the stop event ends run() without waiting for the interval."""
        async with looping(env) as stop:
            await parked(env)
            stop.set()  # the manual clock never moves here: only the stop event can end the loop

    async def test_store_failure_is_survived(self, tmp_path: Path) -> None:
        """A sync that fails is logged and counted; the next round applies the file."""
        env = make_env(tmp_path, FlakyStore(failures=1))
        env.write(f"{A}\n")
        with capture_logs() as logs:
            async with looping(env):
                await eventually(lambda: events(logs, "watchlist.reload_failed"))
                loop_errors = env.metrics.registry.get_sample_value(
                    "watcher_internal_errors_total", {"loop": "watchlist"}
                )
                assert loop_errors == 1.0
                await env.clock.advance(INTERVAL)
                await eventually(lambda: _has(env, {A}))


async def _has(env: Env, ids: set[str]) -> bool:
    return set(await env.watched()) == ids


class _FailingRegister(MemoryStore):
    """A memory store whose next `register` fails with a store outage."""

    fail = 0

    async def register(self, regs: Sequence[Registration], now: float) -> list[RegisterResult]:
        """Fail while failures remain, then behave like the memory store."""
        if self.fail > 0:
            self.fail -= 1
            raise StoreUnavailable("database is locked")
        return await super().register(regs, now)


async def test_an_addition_that_failed_to_register_is_read_again(tmp_path: Path) -> None:
    """A store outage during an in-place file's additions: the next round reads the file again and
    registers them (not only once the file has settled)."""
    store = _FailingRegister()
    env = make_env(tmp_path, store, settle_s=SETTLE)
    write_in_place(env.path, f"{A}\n")
    assert await env.reloader.reload()
    write_in_place(env.path, f"{A}\n{B}\n")
    store.fail = 1
    with pytest.raises(StoreUnavailable):
        await env.reloader.reload()
    assert await env.reloader.reload()
    assert set(await env.watched()) == {A, B}
