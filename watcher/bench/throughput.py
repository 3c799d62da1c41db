"""`throughput`: polls per second of the real daemon against a bare aiohttp client loop (SPEC §9).

Both hit the same simulator process (every job always `active`) at the same concurrency. The daemon holds
enough watches that every one is always due and its rate limit is out of the way, so it polls as fast as its
pipeline allows: claim from the store, token bucket, upstream client, policy, batched save, metrics.

A shared machine's speed drifts within seconds (a fixed loop of arithmetic took anywhere from 0.35 to 0.72 s
of CPU within one minute here), so the two sides take turns in short slices: the bare loop with the daemon
paused (SIGSTOP), then the daemon (SIGCONT) with the bare loop's gate closed, many times over. Both are
counted at the simulator, which sees every request of either side alike, and the figure is the daemon's
total over its slices against the bare loop's over its own (a ratio of means): drift hits both sides alike.
Where the machine lets this process choose CPUs (`sched_setaffinity`, two or more allowed), the simulator
has one CPU to itself and the two sides share another, so neither side's threads ever run beside the
simulator and the scheduler's placement varies nothing between slices. The simulator's CPU use is reported:
near one full core it is the bottleneck of both, and the ratio can then only say the daemon keeps up with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from watcher.bench import harness
from watcher.bench.report import ScenarioResult

TARGET_RATIO = 0.80
CONCURRENCY = 64  # the default `upstream.max_concurrency`, used by both sides
PAIRS = 15  # bare-loop and daemon slices, taking turns
# Not counted at the start of a slice: the bare loop's first requests, and the daemon catching up after
# SIGCONT (the answers that came while it was paused, its overdue timers). Slices of 2 s keep what that
# leaves out small: with 0.75 s slices the same lead-ins lifted the ratio by about 0.03 over 8 s slices.
BARE_LEAD_S = 0.1
DAEMON_LEAD_S = 0.25


class GatedLoop:
    """`concurrency` plain GET loops on one session (GET, read, `json.loads`), running while the gate is open.

    It stays connected between its slices, as the paused daemon does, so no slice pays for a new session. A
    request that fails is counted in `failed` (the run then fails); its worker goes on.
    """

    def __init__(self, base_url: str, ids: list[str], concurrency: int) -> None:
        self._prefix = base_url.rstrip("/") + "/jobs/"
        self._ids = ids
        self._concurrency = concurrency
        self._headers = {
            "Authorization": f"Bearer {harness.SIM_TOKEN}",
            "x-api-key": harness.SIM_KEY,
            "x-workspace-slug": harness.SIM_SLUG,
            "Accept": "application/json",
        }
        self._gate = asyncio.Event()
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.failed = 0

    async def run(self) -> None:
        """The loops, until `stop`; they wait at the gate, closed at first."""
        connector = aiohttp.TCPConnector(limit=self._concurrency, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(self._worker(k, session) for k in range(self._concurrency)))

    async def _worker(self, k: int, session: aiohttp.ClientSession) -> None:
        ids, i = self._ids, k
        while True:
            await self._gate.wait()
            if self._closing:
                return
            if not self._gate.is_set():
                continue  # woken by an `open`, but the gate closed again before this worker ran
            self._busy += 1
            self._idle.clear()
            try:
                async with session.get(self._prefix + ids[i % len(ids)], headers=self._headers) as resp:
                    if resp.status != 200:
                        self.failed += 1
                    json.loads(await resp.read())  # a client that fetches jobs reads what they say
            except (aiohttp.ClientError, ValueError):
                self.failed += 1
            finally:
                self._busy -= 1
                if not self._busy:
                    self._idle.set()
            i += self._concurrency

    def open(self) -> None:
        """Let the loops run."""
        self._gate.set()

    async def close(self) -> None:
        """Close the gate and wait for the requests in flight."""
        self._gate.clear()
        await self._idle.wait()

    async def stop(self) -> None:
        """End every loop (once its request in flight is answered)."""
        self._closing = True
        self._gate.set()


@dataclass
class _Slices:
    """One side's slices of `seconds`: polls per second, its CPU µs per poll, the simulator's CPU share."""

    seconds: float
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    sim_share: list[float] = field(default_factory=list)


async def _slice(
    s: aiohttp.ClientSession,
    sim: harness.Child,
    cpu_seconds: Callable[[], float],
    out: _Slices,
) -> None:
    """Count one slice at the simulator: requests answered, and the CPU of one side and of the simulator."""
    stats = str(URL(sim.url).origin()) + "/_sim/stats"

    async def answered() -> float:
        async with s.get(stats) as resp:
            return float((await resp.json())["requests"])

    n0, t0, c0, sim0 = await answered(), time.monotonic(), cpu_seconds(), sim.cpu_seconds()
    await asyncio.sleep(out.seconds)
    n1, t1, c1, sim1 = await answered(), time.monotonic(), cpu_seconds(), sim.cpu_seconds()
    if n1 <= n0:
        raise harness.BenchError("throughput: no request reached the simulator in a slice")
    out.rates.append((n1 - n0) / (t1 - t0))
    out.cpu_us.append((c1 - c0) / (n1 - n0) * 1e6)
    out.sim_share.append((sim1 - sim0) / (t1 - t0))


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` onto `cpus`; threads it starts later inherit that from their starter."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            os.sched_setaffinity(int(task), cpus)


@contextlib.contextmanager
def _pinned(sim: harness.Child, daemon: harness.Daemon) -> Iterator[str]:
    """The simulator on one CPU, the daemon and this process (the bare loop) on another, where possible;
    yields how, for the report. This process gets its own CPUs back afterwards (other scenarios follow)."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(allowed) < 2:
        yield f"not pinned ({len(allowed) or 'unknown'} CPU allowed)"
        return
    mine = os.getpid()
    _pin(sim.pid, {allowed[0]})
    _pin(daemon.pid, {allowed[1]})
    _pin(mine, {allowed[1]})
    try:
        yield f"simulator on CPU {allowed[0]}, daemon and bare loop on CPU {allowed[1]}"
    finally:
        _pin(mine, set(allowed))


async def run(ctx: harness.Context) -> ScenarioResult:
    """Slices of the bare loop and the daemon taking turns; the ratio of their totals."""
    res = ScenarioResult("throughput")
    watches = 300 if ctx.quick else 3_000
    warmup_s = 0.5 if ctx.quick else 2.0
    pairs = 3 if ctx.quick else PAIRS
    slice_s = ctx.window_s / 3 if ctx.quick else max(1.0, ctx.window_s / 5)
    ids = harness.job_ids(watches, seed=1)
    store_url = harness.fresh_store_url(ctx.store, ctx.workdir, "throughput")
    await harness.build_store(store_url, ids, time.time())
    sides = _Slices(slice_s), _Slices(slice_s)
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
            f"throughput: daemon with {watches:,} always-due watches; {pairs} pairs of {slice_s:g}s slices"
        )
        async with (
            harness.daemon(ctx.workdir, config, port, name="throughput-daemon") as d,
            aiohttp.ClientSession() as s,
        ):
            await _warm_up(d, s, watches, warmup_s)
            placement = await _take_turns(ctx, sim, d, s, GatedLoop(sim.url, ids, CONCURRENCY), sides, pairs)
    _report(res, *sides, pairs, watches)
    res.notes.append(f"placement: {placement}")
    return res


async def _take_turns(
    ctx: harness.Context,
    sim: harness.Child,
    d: harness.Daemon,
    s: aiohttp.ClientSession,
    bare: GatedLoop,
    sides: tuple[_Slices, _Slices],
    pairs: int,
) -> str:
    """`pairs` slices of the bare loop (the daemon paused), each followed by one of the daemon's."""
    bare_side, daemon_side = sides
    bare_task = asyncio.ensure_future(bare.run())
    try:
        with _pinned(sim, d) as placement:
            for k in range(pairs):
                d.pause()
                try:
                    bare.open()
                    await asyncio.sleep(BARE_LEAD_S)
                    await _slice(s, sim, time.process_time, bare_side)  # this process runs the bare loop
                    await bare.close()
                finally:
                    d.resume()
                await asyncio.sleep(DAEMON_LEAD_S)
                await _slice(s, sim, d.cpu_seconds, daemon_side)
                ctx.say(
                    f"throughput: pair {k + 1}: bare {bare_side.rates[-1]:,.0f}/s,"
                    f" daemon {daemon_side.rates[-1]:,.0f}/s"
                )
    finally:
        await bare.stop()
        await bare_task
    if bare.failed:
        raise harness.BenchError(f"baseline: {bare.failed} requests were not answered 200")
    return placement


def _report(res: ScenarioResult, bare: _Slices, daemon: _Slices, pairs: int, watches: int) -> None:
    ratios = [r / b for r, b in zip(daemon.rates, bare.rates, strict=True)]
    res.add("bare aiohttp loop (mean)", statistics.fmean(bare.rates), "polls/s")
    res.add("daemon (mean)", statistics.fmean(daemon.rates), "polls/s")
    res.add(
        "ratio daemon / bare loop (ratio of the means)",
        sum(daemon.rates) / sum(bare.rates),
        at_least=TARGET_RATIO,
    )
    res.add("median of the pair ratios", statistics.median(ratios))
    res.add("lowest pair ratio", min(ratios))
    res.add("highest pair ratio", max(ratios))
    res.add("bare loop CPU per poll", statistics.median(bare.cpu_us), "µs")
    res.add("daemon CPU per poll", statistics.median(daemon.cpu_us), "µs")
    res.add("simulator CPU, bare loop slices", statistics.median(bare.sim_share) * 100, "% of a core")
    res.add("simulator CPU, daemon slices", statistics.median(daemon.sim_share) * 100, "% of a core")
    res.notes.append(
        f"concurrency {CONCURRENCY} on both sides, {watches:,} watches always due; {pairs} pairs of"
        f" {bare.seconds:g}s slices counted at the simulator, the bare loop (GET, read, json.loads) first"
        f" with the daemon paused, {BARE_LEAD_S:g}s / {DAEMON_LEAD_S:g}s not counted at a slice's start;"
        " ratios of the pairs " + ", ".join(f"{r:.2f}" for r in ratios)
    )


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
