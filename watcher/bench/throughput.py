"""`throughput`: polls per second of the real daemon against a bare aiohttp client loop (SPEC §9).

Both hit the same simulator process (every job always `active`) at the same concurrency. The daemon holds
enough watches that every one is always due and its rate limit is out of the way, so it polls as fast as its
pipeline allows: claim from the store, token bucket, upstream client, policy, batched save, metrics. The
two alternate in short windows (the daemon paused during the bare loop's), and the figure is the median
of the pairs' ratios, so drift on a shared machine hits both sides of each ratio alike. The simulator's CPU
use is reported: near one full core it is the bottleneck of both, and the ratio can then only say the
daemon keeps up with it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import aiohttp

from watcher.bench import harness
from watcher.bench.report import ScenarioResult

TARGET_RATIO = 0.80
CONCURRENCY = 64  # the default `upstream.max_concurrency`, used by both sides
PAIRS = 9  # alternating bare-loop and daemon windows: more and shorter ones, for a steadier median
SETTLE_S = 0.5


async def bare_client_rate(
    base_url: str, ids: list[str], concurrency: int, warmup_s: float, window_s: float
) -> tuple[float, float]:
    """(requests/s, CPU µs per request) of `concurrency` plain GET loops on one session, after a warm-up."""
    headers = {
        "Authorization": f"Bearer {harness.SIM_TOKEN}",
        "x-api-key": harness.SIM_KEY,
        "x-workspace-slug": harness.SIM_SLUG,
        "Accept": "application/json",
    }
    prefix = base_url.rstrip("/") + "/jobs/"
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup_s
    end = start + window_s
    counted = 0
    failed = 0
    cpu_at_start = 0.0

    async def mark_start() -> None:
        nonlocal cpu_at_start
        await asyncio.sleep(warmup_s)
        cpu_at_start = time.process_time()  # this process does nothing else meanwhile

    async def worker(k: int, session: aiohttp.ClientSession) -> None:
        nonlocal counted, failed
        i = k
        while loop.time() < end:
            async with session.get(prefix + ids[i % len(ids)], headers=headers) as resp:
                if resp.status != 200:
                    failed += 1
                json.loads(await resp.read())  # a client that fetches jobs reads what they say
            if loop.time() >= start:
                counted += 1
            i += concurrency

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(mark_start(), *(worker(k, session) for k in range(concurrency)))
        elapsed = loop.time() - start
        cpu = time.process_time() - cpu_at_start
    if failed or not counted:
        raise harness.BenchError(f"baseline: {failed} requests were not answered 200, {counted} were")
    return counted / elapsed, cpu / counted * 1e6


async def run(ctx: harness.Context) -> ScenarioResult:
    """Alternating windows of the bare loop and the daemon; the median of the pairs' ratios.

    A shared machine's speed drifts within seconds, so one baseline before and one after a long daemon
    window can disagree by a quarter. Here the daemon runs for the whole scenario but is paused (SIGSTOP)
    while the bare loop has its window, and each daemon window follows its bare window directly: every
    ratio compares two windows a few seconds apart, and the median of the pairs drops the odd outlier.
    """
    res = ScenarioResult("throughput")
    watches = 300 if ctx.quick else 3_000
    warmup_s = 0.5 if ctx.quick else 2.0
    pairs = 2 if ctx.quick else PAIRS
    window_s = ctx.window_s / 2 if ctx.quick else max(1.0, ctx.window_s / 4)
    ids = harness.job_ids(watches, seed=1)
    store_url = harness.fresh_store_url(ctx.store, ctx.workdir, "throughput")
    await harness.build_store(store_url, ids, time.time())
    bare_rates: list[float] = []
    bare_cpu: list[float] = []
    rates: list[float] = []
    cpu: list[float] = []
    sim_bare: list[float] = []
    sim_daemon: list[float] = []
    async with harness.simulator(ctx.workdir, "--unknown-jobs", "active", "--max-log", "0") as sim:
        config, port = harness.daemon_config(
            ctx,
            "throughput",
            sim,
            store_url,
            upstream={"max_concurrency": CONCURRENCY, "rate_limit_per_s": 1_000_000.0},
            # Every interval at its minimum: a watch is due again as soon as its poll is saved.
            polling={"initial_interval_s": 0.001, "multiplier": 1.0, "max_interval_s": 0.001, "jitter": 0.0},
        )
        ctx.say(
            f"throughput: daemon with {watches:,} always-due watches; {pairs} pairs of {window_s:g}s windows"
        )
        async with (
            harness.daemon(ctx.workdir, config, port, name="throughput-daemon") as d,
            aiohttp.ClientSession() as s,
        ):
            await _warm_up(d, s, watches, warmup_s)
            for k in range(pairs):
                d.pause()
                try:
                    cpu0, t0 = sim.cpu_seconds(), time.monotonic()
                    b_rate, b_us = await bare_client_rate(sim.url, ids, CONCURRENCY, 0.5, window_s)
                    sim_bare.append((sim.cpu_seconds() - cpu0) / (time.monotonic() - t0))
                finally:
                    d.resume()
                await asyncio.sleep(SETTLE_S)  # back to its steady state before the window opens
                d_rate, d_us, sim_share = await _daemon_window(d, s, sim, window_s)
                ctx.say(f"throughput: pair {k + 1}: bare {b_rate:,.0f}/s, daemon {d_rate:,.0f}/s")
                bare_rates.append(b_rate)
                bare_cpu.append(b_us)
                rates.append(d_rate)
                cpu.append(d_us)
                sim_daemon.append(sim_share)
    ratios = [r / b for r, b in zip(rates, bare_rates, strict=True)]
    res.add("bare aiohttp loop (median)", statistics.median(bare_rates), "polls/s")
    res.add("daemon (median)", statistics.median(rates), "polls/s")
    res.add("ratio daemon / bare loop (median of pairs)", statistics.median(ratios), at_least=TARGET_RATIO)
    res.add("lowest pair ratio", min(ratios))
    res.add("highest pair ratio", max(ratios))
    res.add("bare loop CPU per poll", statistics.median(bare_cpu), "µs")
    res.add("daemon CPU per poll", statistics.median(cpu), "µs")
    res.add("simulator CPU, bare loop windows", statistics.median(sim_bare) * 100, "% of a core")
    res.add("simulator CPU, daemon windows", statistics.median(sim_daemon) * 100, "% of a core")
    res.notes.append(
        f"concurrency {CONCURRENCY} on both sides, {watches:,} watches always due; {pairs} pairs of"
        f" {window_s:g}s windows, the bare loop (GET, read, json.loads) first with the daemon paused;"
        " ratios of the pairs " + ", ".join(f"{r:.2f}" for r in ratios)
    )
    return res


async def _warm_up(d: harness.Daemon, s: aiohttp.ClientSession, watches: int, warmup_s: float) -> None:
    """Past every watch's first poll (a transition that stores an event) and the warm-up time."""
    ready_at = time.monotonic()
    deadline = ready_at + max(30.0, 10 * warmup_s)
    while await d.polls_total(s) < 1.2 * watches or time.monotonic() - ready_at < warmup_s:
        if time.monotonic() > deadline:
            raise harness.BenchError("throughput: the daemon did not poll every watch within the warm-up")
        await asyncio.sleep(0.1)


async def _daemon_window(
    d: harness.Daemon, s: aiohttp.ClientSession, sim: harness.Child, window_s: float
) -> tuple[float, float, float]:
    """(polls/s, daemon CPU µs per poll, simulator CPU share) over one window."""
    polls0, cpu0, t0 = await d.polls_total(s), d.cpu_seconds(), time.monotonic()
    sim_cpu0 = sim.cpu_seconds()
    await asyncio.sleep(window_s)
    polls1, cpu1, t1 = await d.polls_total(s), d.cpu_seconds(), time.monotonic()
    sim_cpu1 = sim.cpu_seconds()
    polls = polls1 - polls0
    if polls <= 0:
        raise harness.BenchError("throughput: the daemon made no polls in the window")
    return polls / (t1 - t0), (cpu1 - cpu0) / polls * 1e6, (sim_cpu1 - sim_cpu0) / (t1 - t0)
