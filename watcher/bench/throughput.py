"""`throughput`: polls per second of the real daemon against a bare aiohttp client loop (SPEC §9).

Both hit the same simulator process (every job always `active`) at the same concurrency. The daemon holds
enough watches that every one is always due and its rate limit is out of the way, so it polls as fast as its
pipeline allows: claim from the store, token bucket, upstream client, policy, batched save, metrics. The
baseline runs before and after the daemon and the two are averaged, so drift on a shared machine is shared
too. The simulator's CPU use is reported: near one full core it is the bottleneck of both, and the ratio
can then only say the daemon keeps up with it.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from watcher.bench.harness import (
    SIM_KEY,
    SIM_SLUG,
    SIM_TOKEN,
    BenchError,
    Child,
    Context,
    build_store,
    daemon,
    free_port,
    fresh_store_url,
    job_ids,
    simulator,
    write_config,
)
from watcher.bench.report import ScenarioResult

TARGET_RATIO = 0.80
CONCURRENCY = 64  # the default `upstream.max_concurrency`, used by both sides


async def bare_client_rate(
    base_url: str, ids: list[str], concurrency: int, warmup_s: float, window_s: float
) -> tuple[float, float]:
    """(requests/s, CPU µs per request) of `concurrency` plain GET loops on one session, after a warm-up."""
    headers = {
        "Authorization": f"Bearer {SIM_TOKEN}",
        "x-api-key": SIM_KEY,
        "x-workspace-slug": SIM_SLUG,
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
        raise BenchError(f"baseline: {failed} requests were not answered 200, {counted} were")
    return counted / elapsed, cpu / counted * 1e6


async def run(ctx: Context) -> ScenarioResult:
    """Baseline, daemon, baseline; the ratio of the daemon's rate to the baselines' mean."""
    res = ScenarioResult("throughput")
    watches = 300 if ctx.quick else 3_000
    warmup_s = 0.5 if ctx.quick else 2.0
    ids = job_ids(watches, seed=1)
    store_url = fresh_store_url(ctx.store, ctx.workdir, "throughput")
    await build_store(store_url, ids, time.time())
    async with simulator(ctx.workdir, "--unknown-jobs", "active", "--max-log", "0") as sim:
        baselines, bare_cpu, sim_cpu = [], [], []
        for phase in ("before", "daemon", "after"):
            if phase == "daemon":
                rate, daemon_cpu_us, sim_share = await _daemon_rate(ctx, sim, store_url, watches, warmup_s)
                sim_cpu.append(sim_share)
                continue
            cpu0, t0 = sim.cpu_seconds(), time.monotonic()
            ctx.say(f"throughput: bare aiohttp loop ({phase} the daemon), {ctx.window_s:g}s")
            bare_rate, bare_us = await bare_client_rate(sim.url, ids, CONCURRENCY, warmup_s, ctx.window_s)
            baselines.append(bare_rate)
            bare_cpu.append(bare_us)
            sim_cpu.append((sim.cpu_seconds() - cpu0) / (time.monotonic() - t0))
    baseline = sum(baselines) / len(baselines)
    res.add("bare aiohttp loop", baseline, "polls/s")
    res.add("daemon", rate, "polls/s")
    res.add("ratio daemon / bare loop", rate / baseline if baseline else None, at_least=TARGET_RATIO)
    res.add("bare loop CPU per poll", sum(bare_cpu) / len(bare_cpu), "µs")
    res.add("daemon CPU per poll", daemon_cpu_us, "µs")
    res.add("simulator CPU, bare loop phases", max(sim_cpu[0], sim_cpu[2]) * 100, "% of a core")
    res.add("simulator CPU, daemon phase", sim_cpu[1] * 100, "% of a core")
    runs = ", ".join(f"{b:,.0f}" for b in baselines)
    res.notes.append(
        f"concurrency {CONCURRENCY} on both sides, {watches:,} watches always due, windows of"
        f" {ctx.window_s:g}s after {warmup_s:g}s warm-up; the bare loop (GET, read, json.loads) ran {runs}/s"
    )
    return res


async def _daemon_rate(
    ctx: Context, sim: Child, store_url: str, watches: int, warmup_s: float
) -> tuple[float, float, float]:
    """(polls/s, daemon CPU µs per poll, simulator CPU share) of a daemon whose every watch is always due."""
    port = free_port()
    config = write_config(
        ctx.workdir / "throughput.toml",
        upstream_url=sim.url,
        store_url=store_url,
        api_port=port,
        upstream={"max_concurrency": CONCURRENCY, "rate_limit_per_s": 1_000_000.0},
        # Every interval at its minimum: a watch is due again as soon as its poll is saved.
        polling={"initial_interval_s": 0.001, "multiplier": 1.0, "max_interval_s": 0.001, "jitter": 0.0},
    )
    ctx.say(f"throughput: daemon with {watches:,} always-due watches, {ctx.window_s:g}s")
    async with daemon(ctx.workdir, config, port, name="throughput-daemon") as d, aiohttp.ClientSession() as s:
        # The first poll of each watch is a transition (an event is stored): warm up past all of them.
        ready_at = time.monotonic()
        deadline = ready_at + max(30.0, 10 * warmup_s)
        while await d.polls_total(s) < 1.2 * watches or time.monotonic() - ready_at < warmup_s:
            if time.monotonic() > deadline:
                raise BenchError("throughput: the daemon did not poll every watch within the warm-up")
            await asyncio.sleep(0.1)
        polls0, cpu0, t0 = await d.polls_total(s), d.cpu_seconds(), time.monotonic()
        sim_cpu0 = sim.cpu_seconds()
        await asyncio.sleep(ctx.window_s)
        polls1, cpu1, t1 = await d.polls_total(s), d.cpu_seconds(), time.monotonic()
        sim_cpu1 = sim.cpu_seconds()
    polls = polls1 - polls0
    if polls <= 0:
        raise BenchError("throughput: the daemon made no polls in the window")
    return polls / (t1 - t0), (cpu1 - cpu0) / polls * 1e6, (sim_cpu1 - sim_cpu0) / (t1 - t0)
