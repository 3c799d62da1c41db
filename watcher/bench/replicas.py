"""`replicas`: 1 vs 3 `watcher run` processes on one PostgreSQL database, and the takeover after a SIGKILL.

Throughput: one store of always-active jobs whose every watch is always due (as in `throughput`), polled
first by one replica, then by three, against one simulator; polls/s is `watcher_polls_total` summed over
the replicas in a timed window. Same run, same store, same simulator: the 3/1 ratio is the figure.

Takeover (SPEC §11): three replicas poll a second store at a moderate rate while the simulator answers
every request after `SLOW_S`, so each replica always holds leases on the polls it has in flight. One replica
is SIGKILLed; the watches it held are those whose lease token is still the same `SETTLE_S` later (a live
replica finishes a poll well within that, the dead one's leases only expire after `LEASE_S`). The takeover
time is, from the simulator's request log, the time from the kill until every one of them has been polled
again. It cannot be shorter than what was left of the lease, and SPEC §11 wants it within one lease period
(+1 s: an idle scheduler re-checks the store at least every second).

Needs `--store postgresql://…`: several processes share only a PostgreSQL store, so with SQLite the
scenario is skipped, with a line saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from watcher.bench import harness, stores
from watcher.bench.report import ScenarioResult

REPLICAS = 3
CONCURRENCY = 64  # per replica: the default `upstream.max_concurrency`
LEASE_S = 3.0  # short, so the takeover is quick to measure; > upstream timeout_s + SETTLE_S
TIMEOUT_S = 1.0  # `upstream.timeout_s`: a live replica's poll is over within this
SETTLE_S = 1.5  # after the kill: leases unchanged this long belong to the dead replica
SLOW_S = 0.3  # every simulator answer waits this long in the takeover phase: polls stay in flight
TAKEOVER_INTERVAL_S = 2.0  # poll interval of each watch in the takeover phase
MAX_INFLIGHT = 2  # "no job polled by two replicas at once": the most in flight for one job is 1
SKIP_REASON = (
    "needs a PostgreSQL store (only PostgreSQL is shared by several processes):"
    " watcher bench --store postgresql://USER@HOST:5432/DB replicas"
)
ALWAYS_DUE = {"initial_interval_s": 0.001, "multiplier": 1.0, "max_interval_s": 0.001, "jitter": 0.0}


async def run(ctx: harness.Context) -> ScenarioResult:
    """Throughput of 1 and of 3 replicas, then the takeover after one of 3 is killed."""
    res = ScenarioResult("replicas")
    if not stores.is_postgres(ctx.store):
        res.skipped = SKIP_REASON
        return res
    watches = 300 if ctx.quick else 2_000
    takeover_watches = 120 if ctx.quick else 600
    warmup_s = 0.5 if ctx.quick else 2.0

    store_url = harness.fresh_store_url(ctx.store, ctx.workdir, "replicas")
    await harness.build_store(store_url, harness.job_ids(watches, seed=31), time.time())
    async with harness.simulator(ctx.workdir, "--unknown-jobs", "active", "--max-log", "0") as sim:
        one = await _rate(ctx, sim, store_url, 1, watches, warmup_s)
        three = await _rate(ctx, sim, store_url, REPLICAS, watches, warmup_s)

    takeover_url = harness.fresh_store_url(ctx.store, ctx.workdir, "replicas-takeover")
    await harness.build_store(takeover_url, harness.job_ids(takeover_watches, seed=32), time.time())
    slow = ("--fault-slow", "1", "--slow-s", str(SLOW_S))
    async with harness.simulator(ctx.workdir, "--unknown-jobs", "active", *slow) as sim:
        held, delays, inflight = await _takeover(ctx, sim, takeover_url)

    res.add("1 replica", one["rate"], "polls/s")
    res.add(f"{REPLICAS} replicas, together", three["rate"], "polls/s")
    res.add(f"{REPLICAS} replicas / 1", three["rate"] / one["rate"])
    res.add("daemon CPU per poll, 1 replica", one["cpu_us"], "µs")
    res.add(f"daemon CPU per poll, {REPLICAS} replicas", three["cpu_us"], "µs")
    res.add("simulator CPU, 1 replica", one["sim_cpu"] * 100, "% of a core")
    res.add(f"simulator CPU, {REPLICAS} replicas", three["sim_cpu"] * 100, "% of a core")
    res.add("machine CPU busy, 1 replica", one["machine_busy"] * 100, "% of all cores")
    res.add(f"machine CPU busy, {REPLICAS} replicas", three["machine_busy"] * 100, "% of all cores")
    res.add("lease_s", LEASE_S, "s")
    res.add("watches held by the killed replica", len(held))
    res.add("takeover after SIGKILL, median", statistics.median(delays), "s")
    res.add("takeover after SIGKILL, max", max(delays), "s", at_most=LEASE_S + 1.0)
    res.add("most polls of one job in flight at once", inflight, at_most=MAX_INFLIGHT)
    shares = " + ".join(f"{r:,.0f}" for r in three["per_replica"])
    res.notes.append(
        f"throughput: {watches:,} watches always due, max_concurrency {CONCURRENCY} per replica, windows of"
        f" {ctx.window_s:g}s; {REPLICAS} replicas polled {shares}/s; replicas, simulator and PostgreSQL"
        " share this machine's cores"
    )
    res.notes.append(
        f"takeover: {takeover_watches:,} watches polled every ~{TAKEOVER_INTERVAL_S:g}s by {REPLICAS}"
        f" replicas, every answer delayed {SLOW_S:g}s, lease_s {LEASE_S:g}; time from SIGKILL until every"
        " watch the killed replica held was polled again (simulator request log)"
    )
    return res


def _config(
    ctx: harness.Context, sim: harness.Child, store_url: str, name: str, polling: dict[str, Any]
) -> tuple[Path, int]:
    upstream = {"max_concurrency": CONCURRENCY, "rate_limit_per_s": 1_000_000.0, "timeout_s": TIMEOUT_S}
    daemon = {"lease_s": LEASE_S}
    return harness.daemon_config(ctx, name, sim, store_url, upstream=upstream, polling=polling, daemon=daemon)


@contextlib.asynccontextmanager
async def _replicas(
    ctx: harness.Context, sim: harness.Child, store_url: str, n: int, name: str, polling: dict[str, Any]
) -> AsyncIterator[list[harness.Daemon]]:
    """`n` `watcher run` processes on one store, each in its own process with its own API port."""
    async with contextlib.AsyncExitStack() as stack:
        ds: list[harness.Daemon] = []
        for i in range(n):
            path, port = _config(ctx, sim, store_url, f"{name}-{i}", polling)
            ds.append(
                await stack.enter_async_context(harness.daemon(ctx.workdir, path, port, name=f"{name}-{i}"))
            )
        yield ds


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU ticks of the whole machine so far, all cores together, from `/proc/stat`."""
    with open("/proc/stat", encoding="ascii") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # minus idle and iowait


async def _polls(ds: list[harness.Daemon], s: aiohttp.ClientSession) -> list[float]:
    return list(await asyncio.gather(*(d.polls_total(s) for d in ds)))


async def _rate(
    ctx: harness.Context, sim: harness.Child, store_url: str, n: int, watches: int, warmup_s: float
) -> dict[str, Any]:
    """Polls/s of `n` replicas polling always-due watches, summed, with their CPU per poll."""
    ctx.say(f"replicas: {n} replica(s), {watches:,} always-due watches, {ctx.window_s:g}s")
    async with (
        _replicas(ctx, sim, store_url, n, f"replicas-{n}x", ALWAYS_DUE) as ds,
        aiohttp.ClientSession() as s,
    ):
        # Past every first observation, and past the leases a previous phase's processes left behind.
        ready_at = time.monotonic()
        deadline = ready_at + 60.0
        while sum(await _polls(ds, s)) < 1.2 * watches or time.monotonic() - ready_at < warmup_s + LEASE_S:
            if time.monotonic() > deadline:
                raise harness.BenchError(f"replicas: {n} replica(s) did not poll every watch within 60s")
            await asyncio.sleep(0.1)
        m0, p0 = _machine_cpu(), await _polls(ds, s)
        c0, sc0, t0 = [d.cpu_seconds() for d in ds], sim.cpu_seconds(), time.monotonic()
        await asyncio.sleep(ctx.window_s)
        m1, p1 = _machine_cpu(), await _polls(ds, s)
        c1, sc1, t1 = [d.cpu_seconds() for d in ds], sim.cpu_seconds(), time.monotonic()
    polls = sum(p1) - sum(p0)
    if polls <= 0:
        raise harness.BenchError(f"replicas: {n} replica(s) made no polls in the window")
    return {
        "rate": polls / (t1 - t0),
        "per_replica": [(b - a) / (t1 - t0) for a, b in zip(p0, p1, strict=True)],
        "cpu_us": (sum(c1) - sum(c0)) / polls * 1e6,
        "sim_cpu": (sc1 - sc0) / (t1 - t0),
        "machine_busy": (m1[0] - m0[0]) / max(m1[1] - m0[1], 1),
    }


async def _sim_get(s: aiohttp.ClientSession, root: str, path: str) -> Any:
    async with s.get(root + path) as resp:
        if resp.status != 200:
            raise harness.BenchError(f"replicas: simulator {path} answered {resp.status}")
        return await resp.json()


async def _takeover(
    ctx: harness.Context, sim: harness.Child, store_url: str
) -> tuple[set[str], list[float], int]:
    """(watches the killed replica held, seconds until each was polled again, most in flight per job)."""
    polling = {
        "initial_interval_s": TAKEOVER_INTERVAL_S,
        "multiplier": 1.0,
        "max_interval_s": TAKEOVER_INTERVAL_S,
        "jitter": 0.5,
    }
    parts = urlsplit(sim.url)
    root = f"{parts.scheme}://{parts.netloc}"
    ctx.say(f"replicas: takeover, {REPLICAS} replicas, one SIGKILLed (lease_s {LEASE_S:g})")
    async with (
        _replicas(ctx, sim, store_url, REPLICAS, "replicas-takeover", polling) as ds,
        aiohttp.ClientSession() as s,
    ):
        # The restore spreads the first polls over one interval; then every replica is in its stride.
        await asyncio.sleep(2 * TAKEOVER_INTERVAL_S + 1.0)
        ds[0].proc.kill()
        killed_at = time.time()  # the simulator logs wall-clock times of this machine
        at_kill = await stores.leases(store_url)
        await asyncio.sleep(SETTLE_S - (time.time() - killed_at))
        later = await stores.leases(store_url)
        held = {job for job, lease in at_kill.items() if later.get(job) == lease}
        if not held:
            raise harness.BenchError(
                "replicas: the killed replica held no lease, the takeover was not exercised"
            )
        first: dict[str, float] = {}
        deadline = killed_at + 3 * LEASE_S + 5.0
        while time.time() < deadline:
            for r in (await _sim_get(s, root, "/_sim/requests"))["requests"]:
                job = r["job_id"]
                if job in held and r["started_at"] > killed_at and job not in first:
                    first[job] = r["started_at"] - killed_at
            if len(first) == len(held):
                break
            await asyncio.sleep(0.25)
        inflight = int((await _sim_get(s, root, "/_sim/stats"))["max_inflight_per_job"])
    if len(first) < len(held):
        raise harness.BenchError(
            f"replicas: {len(held) - len(first)} of {len(held)} watches of the killed replica were not"
            f" polled again within {deadline - killed_at:g}s"
        )
    return held, list(first.values()), inflight
