"""`scale`: one daemon holding 10k, 100k and 1M active watches: memory, start-up and cost per poll (SPEC §9).

For each size the store is built first, in this process, through the store API's `register` in big batches;
then a daemon starts on it and restores every watch. Measured: the time from spawn to `/readyz` (restore
included), resident memory after the restore and its peak over the run, bytes per watch over an empty
daemon's, and the daemon's whole CPU time per poll (scheduler, store, client, housekeeping) over a window.

The poll rate is the same at every size, so only the number of watches changes: each watch is polled every
`size / RATE` seconds and the restore spreads the first polls over that period, as it would after a restart.
Every job is always `active` (the simulator's `--unknown-jobs active`), so no watch finishes on the way, and
the store is built as after every watch's first poll (seen `active` once): the windows time the steady,
quiet polls a long-running daemon makes, not first observations (each of which stores an event).

At the largest size a daemon also reloads a watch-list file of that many lines on SIGHUP
(`scale_reload`): reload time, RSS rise and the slowest `/healthz` answer meanwhile.

Each size also runs saturated (every watch always due, as in `throughput`) and idle (the first polls
spread over months, so hardly any is due): SPEC §9 wants CPU per poll at 500 polls/s within 1.5x of CPU
per poll at saturation, and idle CPU near zero.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from watcher.bench import harness, scale_claims, scale_reload, stores
from watcher.bench.report import ScenarioResult

RATE = 500.0  # polls per second at every size; well inside what the pipeline sustains on two cores
MAX_RSS_BYTES = 2**30  # SPEC §9: a million watches under 1 GiB
MAX_COST_RATIO = 2.0  # µs per poll at the largest size within 2x of the smallest
MAX_RATE_COST_RATIO = 1.5  # SPEC §9: CPU per poll at RATE within 1.5x of CPU per poll at saturation
MAX_STORE_COST_RATIO = 1.5  # SPEC §9: on PostgreSQL, one replica's CPU per poll within 1.5x of SQLite's
IDLE_SPREAD_S = 1e7  # first polls spread over ~115 days: at 1M watches one poll every ~10 s


@dataclass
class _Size:
    watches: int
    store_url: str = ""
    build_s: float = 0.0
    startup_s: float = 0.0
    rss: int = 0  # after the restore
    peak: int = 0  # the most the process ever held, measured at the end
    cost_us: float | None = None  # daemon CPU per poll at `rate`
    rate: float = 0.0  # polls per second in the window
    saturated_us: float | None = None  # daemon CPU per poll with every watch always due
    saturated_rate: float = 0.0
    idle_pct: float = 0.0  # daemon CPU, % of one core, with watches present and hardly any due
    idle_rate: float = 0.0


async def run(ctx: harness.Context) -> ScenarioResult:
    """An empty daemon for reference, then each size in turn against one always-active simulator."""
    res = ScenarioResult("scale")
    rate = 100.0 if ctx.quick else RATE
    on_postgres = ctx.store != "sqlite"
    async with harness.simulator(ctx.workdir, "--unknown-jobs", "active", "--max-log", "0") as sim:
        empty = await _measure(ctx, sim, 0, rate)
        sizes = [await _measure(ctx, sim, n, rate) for n in ctx.sizes]
        reload = await scale_reload.measure(ctx, sim, max(ctx.sizes))
        claims = (
            await scale_claims.measure(ctx, _turns(ctx, sim, sizes[0]), _turns(ctx, sim, sizes[-1]))
            if on_postgres and len(sizes) > 1
            else None
        )
        # On PostgreSQL the same sizes on SQLite, at the same rate in the same run: SPEC §9 compares them.
        lite = replace(ctx, store="sqlite")
        baseline = (
            [await _measure(lite, sim, n, rate, steady_only=True) for n in ctx.sizes] if on_postgres else []
        )
    res.add("empty daemon: RSS", empty.rss / 2**20, "MiB")
    res.add("empty daemon: start-up", empty.startup_s, "s")
    for s in sizes:
        label = f"{s.watches:,} watches"
        res.add(f"{label}: store built in", s.build_s, "s")
        res.add(f"{label}: start-up (restore)", s.startup_s, "s")
        res.add(f"{label}: RSS after restore", s.rss / 2**20, "MiB")
        if s.watches >= 1_000_000:
            res.add(f"{label}: peak RSS", s.peak / 2**20, "MiB", at_most=MAX_RSS_BYTES / 2**20)
        else:
            res.add(f"{label}: peak RSS", s.peak / 2**20, "MiB")
        res.add(f"{label}: bytes per watch", (s.rss - empty.rss) / s.watches, "B")
        for what, value, unit in (
            (f"daemon CPU per poll at {rate:g} polls/s", s.cost_us, "µs"),
            ("poll rate in the window", s.rate, "polls/s"),
            ("daemon CPU per poll, saturated", s.saturated_us, "µs"),
            ("poll rate, saturated", s.saturated_rate, "polls/s"),
        ):
            res.add(f"{label}: {what}", value, unit)
        if s.cost_us is not None and s.saturated_us:
            res.add(
                f"{label}: CPU per poll at {rate:g}/s / saturated",
                s.cost_us / s.saturated_us,
                at_most=MAX_RATE_COST_RATIO,
            )
        res.add(f"{label}: idle CPU (watches present, hardly any due)", s.idle_pct, "% of a core")
        res.add(f"{label}: idle poll rate", s.idle_rate, "polls/s")
    for s, b in zip(sizes, baseline, strict=False):
        label = f"{s.watches:,} watches"
        res.add(f"{label}: SQLite's CPU per poll at {rate:g} polls/s (same run)", b.cost_us, "µs")
        if s.cost_us is not None and b.cost_us:
            res.add(
                f"{label}: CPU per poll, PostgreSQL / SQLite",
                s.cost_us / b.cost_us,
                at_most=MAX_STORE_COST_RATIO,
            )
    _report_reload(res, reload, sizes[-1].rss - empty.rss)
    smallest, largest = sizes[0], sizes[-1]
    if claims is not None:
        both = f"{largest.watches:,} / {smallest.watches:,}"
        if smallest.saturated_rate:
            res.add(
                f"claims per second saturated, {both}, one after the other",
                largest.saturated_rate / smallest.saturated_rate,
            )
        res.add(
            f"claims per second saturated, {both}, taking turns ({len(claims.small)} pairs)",
            claims.ratio,
            at_least=1 / MAX_RATE_COST_RATIO,
        )
        res.notes.append(
            "claims per second taking turns: a saturated daemon on each of the two stores, one paused"
            f" (SIGSTOP) while the other has its window; {smallest.watches:,}: "
            + ", ".join(f"{r:,.0f}" for r in claims.small)
            + f"; {largest.watches:,}: "
            + ", ".join(f"{r:,.0f}" for r in claims.large)
        )
    if len(sizes) > 1 and smallest.cost_us and largest.cost_us is not None:
        res.add(
            f"CPU per poll, {largest.watches:,} / {smallest.watches:,}",
            largest.cost_us / smallest.cost_us,
            at_most=MAX_COST_RATIO,
        )
    if on_postgres:
        res.notes.append(
            "PostgreSQL: the watch table is vacuumed once each daemon has restored, before its windows (the"
            " build and the restores rewrite every watch; see watcher.bench.stores.vacuum_watches)"
        )
    if not any(s.watches >= 1_000_000 for s in sizes):
        res.notes.append("no size reached 1,000,000 watches: the RSS target was not checked")
    res.notes.append(
        f"{rate:g} polls/s at every size over {ctx.window_s:g}s windows; bytes per watch = (RSS after restore"
        " - empty daemon's) / watches"
    )
    return res


def _report_reload(res: ScenarioResult, r: scale_reload.Reload, held: int) -> None:
    """The reload's figures; `held` is what as many watches restored from the store add to the RSS."""
    label = f"watch-list of {r.lines:,} lines, SIGHUP"
    res.add(f"{label}: reload time", r.seconds, "s")
    res.add(f"{label}: RSS rise (after the reload)", (r.rss_after - r.rss_before) / 2**20, "MiB")
    res.add(f"{label}: RSS rise (peak)", (r.peak - r.rss_before) / 2**20, "MiB")
    res.add(f"{label}: peak RSS rise beyond the watches held", (r.peak - r.rss_before - held) / 2**20, "MiB")
    res.add(
        f"{label}: slowest /healthz answer during the reload",
        r.slowest_healthz_s * 1000,
        "ms",
        at_most=scale_reload.MAX_STALL_S * 1000,
    )
    res.add(f"{label}: /healthz answers during the reload", r.healthz_answers)


async def _steady(ctx: harness.Context, d: harness.Daemon, s: aiohttp.ClientSession, rate: float) -> None:
    """Wait until the daemon polls at `rate`: a restore that took long leaves a backlog to catch up first."""
    deadline = time.monotonic() + 180.0
    step = 0.5 if ctx.quick else 1.0
    while time.monotonic() < deadline:
        before = await d.polls_total(s)
        await asyncio.sleep(step)
        if abs((await d.polls_total(s) - before) / step - rate) <= 0.25 * rate:
            return
    raise harness.BenchError(f"scale: the daemon did not settle at {rate:g} polls/s within 180s")


async def _window(
    ctx: harness.Context, d: harness.Daemon, s: aiohttp.ClientSession
) -> tuple[float, float, float]:
    """(polls, CPU seconds, wall seconds) of the daemon over one window."""
    polls0, cpu0, t0 = await d.polls_total(s), d.cpu_seconds(), time.monotonic()
    await asyncio.sleep(ctx.window_s)
    polls1, cpu1, t1 = await d.polls_total(s), d.cpu_seconds(), time.monotonic()
    return polls1 - polls0, cpu1 - cpu0, t1 - t0


def _saturated(ctx: harness.Context, sim: harness.Child, store_url: str, name: str) -> tuple[Path, int]:
    """A saturated daemon's configuration: every watch always due, the rate limit out of the way."""
    return _config(ctx, sim, store_url, name, 0.001, 1e6)


def _turns(ctx: harness.Context, sim: harness.Child, size: _Size) -> scale_claims.Side:
    """The saturated daemon on `size`'s store for the claims taking turns."""
    name = f"scale-{size.watches}-turns"
    return scale_claims.Side(size.store_url, *_saturated(ctx, sim, size.store_url, name), f"{name}-daemon")


def _config(
    ctx: harness.Context, sim: harness.Child, store_url: str, name: str, period: float, rate: float
) -> tuple[Path, int]:
    """A daemon configuration polling each watch every `period` seconds, rate-limited to `rate`."""
    polling = {"initial_interval_s": period, "multiplier": 1.0, "max_interval_s": period, "jitter": 0.2}
    return harness.daemon_config(
        ctx, name, sim, store_url, upstream={"rate_limit_per_s": rate}, polling=polling
    )


async def _measure(
    ctx: harness.Context, sim: harness.Child, watches: int, rate: float, *, steady_only: bool = False
) -> _Size:
    """Build a store of `watches`, start a daemon on it and measure it: at `rate`, saturated, idle."""
    name = f"scale-{watches}" + ("-sqlite" if steady_only else "")
    store_url = harness.fresh_store_url(ctx.store, ctx.workdir, name)
    out = _Size(watches, store_url)
    ids = harness.job_ids(watches, seed=watches)
    ctx.say(f"scale: registering {watches:,} watches in the store")
    out.build_s = await harness.build_store(store_url, ids, time.time(), observed=True)
    del ids
    gc.collect()  # the bench's own million ids and registrations are garbage now
    period = max(1.0, watches / rate)
    config, port = _config(ctx, sim, store_url, name, period, 4 * rate)
    ctx.say(f"scale: daemon restoring {watches:,} watches")
    async with (
        harness.daemon(ctx.workdir, config, port, name=f"{name}-daemon") as d,
        aiohttp.ClientSession() as s,
    ):
        out.startup_s = d.startup_s
        out.rss, _ = d.memory()
        if watches:
            await stores.vacuum_watches(store_url)  # PostgreSQL: the build's and the restore's dead rows
            await _steady(ctx, d, s, rate)
            polls, cpu, wall = await _window(ctx, d, s)
            if polls <= 0:
                raise harness.BenchError(
                    f"scale: the daemon with {watches:,} watches made no polls in the window"
                )
            out.cost_us = cpu / polls * 1e6
            out.rate = polls / wall
        _, out.peak = d.memory()
    if not watches or steady_only:
        return out
    # Saturated: every watch always due and the rate limit out of the way, as in `throughput`.
    config, port = _saturated(ctx, sim, store_url, f"{name}-saturated")
    await stores.all_overdue(store_url, time.time())
    ctx.say(f"scale: {watches:,} watches, saturated")
    async with (
        harness.daemon(ctx.workdir, config, port, name=f"{name}-saturated-daemon") as d,
        aiohttp.ClientSession() as s,
    ):
        await stores.vacuum_watches(store_url)
        await asyncio.sleep(min(2.0, ctx.window_s))  # past the restore's first burst
        polls, cpu, wall = await _window(ctx, d, s)
        out.saturated_us = cpu / polls * 1e6 if polls > 0 else None
        out.saturated_rate = polls / wall
    # Idle: the first polls spread over IDLE_SPREAD_S, so hardly any poll is due in the window.
    config, port = _config(ctx, sim, store_url, f"{name}-idle", IDLE_SPREAD_S, 4 * rate)
    await stores.all_overdue(store_url, time.time())
    ctx.say(f"scale: {watches:,} watches, idle")
    async with (
        harness.daemon(ctx.workdir, config, port, name=f"{name}-idle-daemon") as d,
        aiohttp.ClientSession() as s,
    ):
        await stores.vacuum_watches(store_url)
        await asyncio.sleep(min(2.0, ctx.window_s))
        polls, cpu, wall = await _window(ctx, d, s)
        out.idle_pct = cpu / wall * 100
        out.idle_rate = polls / wall
    return out
