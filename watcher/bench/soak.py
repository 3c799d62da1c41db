"""`soak`: everything at once for a long time; memory, descriptors and tasks must stay flat (SPEC §9).

One daemon runs for `--duration-s` (10 minutes by default) while, all at the same time:

- jobs finish continuously (created at the simulator with a short script, registered through the API);
- two webhooks receive them: a healthy one (the sink process) and a flaky one that answers 503 for a few
  seconds out of every fifteen, so retries run the whole time;
- API clients register watches and delete them again;
- the watch-list file is replaced and the daemon told to reload it (SIGHUP);
- the upstream answers with a steady trickle of faults, and once a minute a burst of 5xx.

Every minute (every few seconds with `--quick`) it samples the daemon's RSS and open descriptors (from
`/proc`; each the median of twelve readings spread over the minute, see `_sample`), its asyncio task count
(`watcher_event_loop_tasks`) and the store's size on disk. The first sample after the warm-up is the
reference: later samples must stay within 10 % of its RSS and within 5 of its descriptors. At the end the
load stops and every finished job must reach the healthy webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from watcher.bench import harness
from watcher.bench.latency import deliveries, new_secret
from watcher.bench.report import ScenarioResult
from watcher.devtools.receiver import Receiver

RSS_TOLERANCE_PCT = 10.0
FD_TOLERANCE = 5
READINGS = 12  # readings of RSS and descriptors per sample, spread over its period
TERMINAL = ("success", "failed")


@dataclass(frozen=True)
class Sample:
    """One reading of the daemon's resources, `t` seconds into the run."""

    t: float
    rss: int
    fds: int
    tasks: float | None
    store_bytes: int | None
    fds_max: int = 0  # the most descriptors of one reading within the sample


@dataclass
class Load:
    """What the load generators did, for the report and the final check."""

    finishing: list[str] = field(default_factory=list)  # jobs scripted to finish, all registered
    registered: int = 0
    deleted: int = 0
    reloads: int = 0
    fault_bursts: int = 0
    errors: list[str] = field(default_factory=list)


def open_fds(pid: int) -> int:
    """Open file descriptors of a process, from `/proc/PID/fd`."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def store_bytes(url: str) -> int | None:
    """Bytes on disk of a SQLite store (database, WAL and shared memory); None for other stores."""
    if not url.startswith("sqlite:///"):
        return None
    path = Path(url.removeprefix("sqlite:///"))
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


async def _every(period_s: float, deadline: float, step: Callable[[], Awaitable[None]], load: Load) -> None:
    """Run `step` every `period_s` until `deadline`; a failing step is noted, never the end of the run."""
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            await step()
        except (aiohttp.ClientError, OSError, TimeoutError, harness.BenchError) as exc:
            if len(load.errors) < 20:
                load.errors.append(f"{type(exc).__name__}: {exc}")
        await asyncio.sleep(max(0.0, period_s - (time.monotonic() - started)))


async def _check(resp: aiohttp.ClientResponse, what: str, ok: tuple[int, ...] = (200, 201, 204)) -> None:
    if resp.status not in ok:
        raise harness.BenchError(f"soak: {what} answered {resp.status}")


@dataclass
class _Driver:
    """The load generators; each method is one step of one of them."""

    sim: str
    api: str
    session: aiohttp.ClientSession
    rng: random.Random
    load: Load
    watchlist: Path
    daemon: harness.Daemon
    jobs_per_step: int
    churn: list[list[str]] = field(default_factory=list)
    pool: list[str] = field(default_factory=list)
    steady: dict[str, object] | None = None  # the simulator's fault settings between bursts

    async def finishing_jobs(self) -> None:
        """New jobs at the simulator, each finishing a few seconds from now, registered in one batch."""
        ids = harness.job_ids(self.jobs_per_step, seed=self.rng.getrandbits(32))
        for job_id in ids:
            spec = {
                "id": job_id,
                "status": "active",
                "script": [[round(self.rng.uniform(0.5, 6.0), 2), self.rng.choice(TERMINAL)]],
            }
            async with self.session.post(self.sim + "/_sim/jobs", json=spec) as resp:
                await _check(resp, "POST /_sim/jobs")
        body = {"watches": [{"job_id": j} for j in ids]}
        async with self.session.post(self.api + "/v1/watches/batch", json=body) as resp:
            await _check(resp, "POST /v1/watches/batch")
        self.load.finishing.extend(ids)
        self.load.registered += len(ids)

    async def churn_watches(self) -> None:
        """Register a few watches of jobs that never finish, and delete those registered a while ago."""
        ids = harness.job_ids(5, seed=self.rng.getrandbits(32))
        body = {"watches": [{"job_id": j} for j in ids]}
        async with self.session.post(self.api + "/v1/watches/batch", json=body) as resp:
            await _check(resp, "POST /v1/watches/batch")
        self.load.registered += len(ids)
        self.churn.append(ids)
        if len(self.churn) > 5:
            for job_id in self.churn.pop(0):
                async with self.session.delete(f"{self.api}/v1/watches/{job_id}") as resp:
                    await _check(resp, "DELETE /v1/watches/{id}", (204, 404))
                self.load.deleted += 1

    async def reload_watchlist(self) -> None:
        """Replace the watch-list file atomically with a rotated set of ids, then SIGHUP the daemon."""
        if not self.pool:
            self.pool = harness.job_ids(300, seed=self.rng.getrandbits(32))
        self.pool = self.pool[20:] + harness.job_ids(20, seed=self.rng.getrandbits(32))
        tmp = self.watchlist.with_suffix(".tmp")
        tmp.write_text("".join(f"{j}\n" for j in self.pool[:200]), encoding="utf-8")
        tmp.replace(self.watchlist)
        self.daemon.hangup()
        self.load.reloads += 1

    async def fault_burst(self) -> None:
        """Half the upstream's answers are 5xx for a few seconds, then the steady trickle again."""
        if self.steady is None:
            async with self.session.get(self.sim + "/_sim/faults") as resp:
                self.steady = dict(await resp.json())
        async with self.session.put(
            self.sim + "/_sim/faults", json={**self.steady, "server_error": 0.5}
        ) as r:
            await _check(r, "PUT /_sim/faults")
        self.load.fault_bursts += 1
        await asyncio.sleep(4.0)
        await self.end_burst()

    async def end_burst(self) -> None:
        """Back to the steady trickle of faults (also when the run ends in the middle of a burst)."""
        if self.steady is not None:
            async with self.session.put(self.sim + "/_sim/faults", json=self.steady) as resp:
                await _check(resp, "PUT /_sim/faults")


async def _flaky(flaky: Receiver, deadline: float) -> None:
    """503 for 4 s out of every 15 s until the deadline."""
    while time.monotonic() < deadline:
        await asyncio.sleep(11.0)
        flaky.set_status(503)
        await asyncio.sleep(4.0)
        flaky.set_status(None)


async def _sample(
    d: harness.Daemon, session: aiohttp.ClientSession, store_url: str, t0: float, period_s: float
) -> Sample:
    """One sample over the next `period_s`: the median of READINGS readings of RSS and descriptors spread
    over it, then the task count and store size at its end.

    One reading alone says more about the moment than about the trend: the upstream connection pool
    shrinks by a dozen after a fault burst (the simulator resets connections, idle ones time out) and
    refills within seconds. A leak moves the median; a pool refilling does not.
    """
    readings: list[tuple[int, int]] = []
    for _ in range(READINGS):
        await asyncio.sleep(period_s / READINGS)
        readings.append((d.memory()[0], open_fds(d.pid)))
    tasks: float | None = None
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        tasks = (await d.metrics(session)).get("watcher_event_loop_tasks")
    rss = int(statistics.median(r for r, _ in readings))
    fds = int(statistics.median(f for _, f in readings))
    return Sample(time.monotonic() - t0, rss, fds, tasks, store_bytes(store_url), max(f for _, f in readings))


def _report(res: ScenarioResult, samples: list[Sample], ref: Sample, load: Load) -> None:
    after = [s for s in samples if s.t >= ref.t]
    rss_dev = max(abs(s.rss - ref.rss) for s in after) / ref.rss * 100
    fd_dev = max(abs(s.fds - ref.fds) for s in after)
    res.add("samples after warm-up", len(after))
    res.add("RSS after warm-up", ref.rss / 2**20, "MiB")
    res.add("RSS at the end", after[-1].rss / 2**20, "MiB")
    res.add("RSS, largest change after warm-up", rss_dev, "%", at_most=RSS_TOLERANCE_PCT)
    res.add("descriptors after warm-up", ref.fds)
    res.add("descriptors, largest change after warm-up", fd_dev, at_most=FD_TOLERANCE + 1)
    res.add("descriptors, most in one reading after warm-up", max(s.fds_max for s in after))
    if ref.tasks is not None and after[-1].tasks is not None:
        res.add("asyncio tasks after warm-up", ref.tasks)
        res.add("asyncio tasks at the end", after[-1].tasks)
    if ref.store_bytes is not None and after[-1].store_bytes is not None:
        res.add("store after warm-up", ref.store_bytes / 2**20, "MiB")
        res.add("store at the end", after[-1].store_bytes / 2**20, "MiB")
    res.add("watches registered", load.registered)
    res.add("watches deleted", load.deleted)
    res.add("watch-list reloads", load.reloads)
    res.add("upstream fault bursts", load.fault_bursts)
    for s in samples:
        tasks = "-" if s.tasks is None else f"{s.tasks:.0f}"
        size = "-" if s.store_bytes is None else f"{s.store_bytes / 2**20:.1f} MiB"
        res.notes.append(
            f"t={s.t:6.0f}s  RSS {s.rss / 2**20:6.1f} MiB  fds {s.fds:4d} (max {s.fds_max:4d})"
            f"  tasks {tasks:>5}  store {size}" + ("  <- reference (end of warm-up)" if s is ref else "")
        )
    res.notes.extend(f"load step failed (noted, the run went on): {e}" for e in load.errors)


async def run(ctx: harness.Context) -> ScenarioResult:
    """Run everything at once for the soak's duration, sampling resources; then drain and check."""
    res = ScenarioResult("soak")
    duration = ctx.duration_s or (30.0 if ctx.quick else 600.0)
    every = 3.0 if ctx.quick else 60.0
    warmup = min(duration / 3, 6.0 if ctx.quick else 120.0)
    rng = random.Random(11)
    store_url = harness.fresh_store_url(ctx.store, ctx.workdir, "soak")
    watchlist = ctx.workdir / "soak-watchlist.txt"
    watchlist.write_text("", encoding="utf-8")
    secret = new_secret()
    flaky = Receiver([secret], ok_status=204)
    faults = ["--fault-server-error", "0.03", "--fault-rate-limit", "0.02", "--fault-garbage", "0.02"]
    faults += ["--fault-slow", "0.01", "--slow-s", "0.5", "--retry-after-s", "1"]
    async with (
        harness.simulator(
            ctx.workdir, *faults, "--unknown-jobs", "active", "--max-log", "0", "--seed", "11"
        ) as sim,
        harness.sink(ctx.workdir, secret) as rx,
    ):
        flaky_url = await flaky.start()
        config, port = harness.daemon_config(
            ctx,
            "soak",
            sim,
            store_url,
            upstream={"rate_limit_per_s": 2_000.0},
            polling={"initial_interval_s": 0.5, "max_interval_s": 2.0, "jitter": 0.2, "retention_s": 30.0},
            webhooks=[
                {"name": "healthy", "url": rx.url, "secret": secret, "timeout_s": 5.0},
                {
                    "name": "flaky",
                    "url": flaky_url,
                    "secret": secret,
                    "timeout_s": 5.0,
                    "retry_initial_s": 0.5,
                    "retry_max_s": 5.0,
                },
            ],
            watchlist=watchlist,
            daemon={"purge_interval_s": 10.0},
        )
        samples: list[Sample] = []
        load = Load()
        try:
            async with (
                harness.daemon(ctx.workdir, config, port, name="soak-daemon") as d,
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            ):
                parts = urlsplit(sim.url)
                drv = _Driver(
                    f"{parts.scheme}://{parts.netloc}",
                    d.api,
                    session,
                    rng,
                    load,
                    watchlist,
                    d,
                    2 if ctx.quick else 5,
                )
                ctx.say(f"soak: {duration:g}s of everything at once, a sample every {every:g}s")
                t0 = time.monotonic()
                deadline = t0 + duration
                reload_s, burst_s = (5.0, 10.0) if ctx.quick else (20.0, 60.0)
                loads = [
                    asyncio.create_task(_every(0.5, deadline, drv.finishing_jobs, load)),
                    asyncio.create_task(_every(1.0, deadline, drv.churn_watches, load)),
                    asyncio.create_task(_every(reload_s, deadline, drv.reload_watchlist, load)),
                    asyncio.create_task(_every(burst_s, deadline, drv.fault_burst, load)),
                    asyncio.create_task(_flaky(flaky, deadline)),
                ]
                try:
                    while (now := time.monotonic()) < deadline:
                        samples.append(await _sample(d, session, store_url, t0, min(every, deadline - now)))
                        s = samples[-1]
                        ctx.say(
                            f"soak: t={s.t:.0f}s RSS {s.rss / 2**20:.1f} MiB, {s.fds} fds, tasks {s.tasks},"
                            f" {len(load.finishing)} jobs so far"
                        )
                finally:
                    for task in loads:
                        task.cancel()
                    await asyncio.gather(*loads, return_exceptions=True)
                flaky.set_status(None)
                await drv.end_burst()
                ctx.say("soak: load stopped; waiting for every finished job to reach the healthy webhook")
                want = set(load.finishing)
                drain_deadline = time.monotonic() + 90.0
                while True:
                    got = {str(x["job_id"]) for x in await deliveries(rx, session) if x["type"] in _EVENTS}
                    if want <= got or time.monotonic() > drain_deadline:
                        break
                    await asyncio.sleep(1.0)
        finally:
            await flaky.stop()
    ref = next((s for s in samples if s.t >= warmup), samples[-1] if samples else None)
    if ref is None:
        res.error = "no sample was taken"
        return res
    _report(res, samples, ref, load)
    res.add("finished jobs not delivered to the healthy webhook", len(want - got), at_most=1)
    res.add("finished jobs", len(want))
    res.notes.insert(
        0,
        f"{duration:g}s, warm-up {warmup:g}s; {drv.jobs_per_step * 2} jobs/s finishing, 5 watches/s"
        " registered and deleted again, the watch list replaced and reloaded, steady upstream faults with"
        " a 5xx burst, a webhook failing 4 s in 15",
    )
    return res


_EVENTS = {f"job.{s}" for s in TERMINAL}
