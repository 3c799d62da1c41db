"""The real-time part of `watcher bench adaptive`: both strategies through real daemons, at a smaller scale.

One `watcher simulate`, two `watcher run` (one `strategy = "backoff"`, one `"adaptive"`), each with its own
store. Every job of the workload is created twice in the simulator, with the same name and the same
scripted duration, once for each daemon, and registered through its API as the policy-level run registers
it (most at creation, some late). A warm-up phase lets both daemons learn every type; once the adaptive
daemon lists every type with enough samples (`GET /v1/job-types`) the measured phase begins. Upstream calls
per job come from the simulator's request log, detection lag is the first request after the scripted
finish minus the finish, on the simulator's clock. Time is compressed by `scale`: every interval and
duration is divided by it, every lag measured multiplied back, so the figures read as real seconds.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from watcher.bench import harness
from watcher.bench.report import ScenarioResult
from watcher.clock import parse_timestamp
from watcher.polling.adaptive.sim import WORKLOAD, Job, make_jobs, percentile

STRATEGIES = ("backoff", "adaptive")
MIN_SAMPLES = 20
CAP_S = 7200.0  # durations are cut here so that the run ends in minutes
# (time scale, warm-up jobs per type, measured jobs per type); quick is a smoke test, not figures
FULL, QUICK = (120.0, 40, 50), (480.0, MIN_SAMPLES + 2, 12)
DEFAULTS = {"initial_interval_s": 5.0, "max_interval_s": 60.0, "error_backoff_max_s": 300.0}


async def _post(session: aiohttp.ClientSession, url: str, body: Any) -> Any:
    async with session.post(url, json=body) as resp:
        if resp.status >= 300:
            raise harness.BenchError(f"POST {url} -> {resp.status}: {(await resp.text())[:200]}")
        return await resp.json()


async def _feed(
    session: aiohttp.ClientSession,
    sim: harness.Child,
    daemons: Sequence[harness.Daemon],
    jobs: list[Job],
    scale: float,
) -> list[list[tuple[str, float]]]:
    """Create each job once per daemon at its (scaled) creation time, register it at its registration
    time; returns, per daemon, (job id, scripted finish on the simulator's clock) in the order of `jobs`."""
    control = sim.url.split("/api/")[0] + "/_sim/jobs"
    events = sorted(
        [(j.created, 0, i) for i, j in enumerate(jobs)] + [(j.registered, 1, i) for i, j in enumerate(jobs)]
    )
    made: list[list[tuple[str, float]]] = [[("", 0.0)] * len(jobs) for _ in daemons]
    origin = min(j.created for j in jobs)
    started = time.monotonic()
    for at, kind, i in events:
        await asyncio.sleep(max(0.0, (at - origin) / scale - (time.monotonic() - started)))
        job = jobs[i]
        if kind == 0:
            duration = min(CAP_S, job.duration) / scale
            spec = {"name": WORKLOAD[job.kind].name, "status": "active", "script": [[duration, "success"]]}
            views = await asyncio.gather(*(_post(session, control, spec) for _ in daemons))
            for d, view in enumerate(views):
                created = parse_timestamp(view["createdAt"]) or 0.0
                made[d][i] = (str(view["id"]), created + duration)
        else:
            await asyncio.gather(
                *(
                    _post(session, dm.api + "/v1/watches", {"job_id": made[d][i][0]})
                    for d, dm in enumerate(daemons)
                )
            )
    return made


async def _until(what: str, timeout_s: float, check: Any) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise harness.BenchError(f"live run: {what} not within {timeout_s:g}s")
        await asyncio.sleep(0.25)


async def run_live(ctx: harness.Context, res: ScenarioResult, lag_target_s: float) -> None:
    """Run the warm-up and the measured phase through both daemons; add the figures to `res`."""
    scale, warmup, measured = QUICK if ctx.quick else FULL
    jobs = make_jobs(WORKLOAD, [(warmup, None), (measured, None)], random.Random(7))
    phases = [[j for j in jobs if j.phase == p] for p in (0, 1)]
    ctx.say(f"adaptive: live run, {len(jobs)} jobs per strategy, time scaled 1/{scale:g}")
    async with harness.simulator(ctx.workdir, "--seed", "7") as sim, aiohttp.ClientSession() as session:
        configs = []
        for strategy in STRATEGIES:
            port = harness.free_port()
            polling: dict[str, Any] = {k: v / scale for k, v in DEFAULTS.items()}
            polling |= {"max_watch_s": 86_400.0 / scale, "strategy": strategy}
            polling |= {"adaptive_lag_target_s": lag_target_s / scale, "adaptive_min_samples": MIN_SAMPLES}
            polling |= {"adaptive_min_interval_s": 1.0 / scale, "adaptive_max_interval_s": 3600.0 / scale}
            name = f"adaptive-live-{strategy}"
            path = harness.write_config(
                ctx.workdir / f"{name}.toml",
                upstream_url=sim.url,
                store_url=harness.fresh_store_url(ctx.store, ctx.workdir, name),
                api_port=port,
                upstream={"rate_limit_per_s": 50.0 * scale},
                polling=polling,
            )
            configs.append((name, path, port))
        async with (
            harness.daemon(ctx.workdir, configs[0][1], configs[0][2], name=configs[0][0]) as backoff,
            harness.daemon(ctx.workdir, configs[1][1], configs[1][2], name=configs[1][0]) as adaptive,
        ):
            daemons = (backoff, adaptive)
            await _feed(session, sim, daemons, phases[0], scale)

            async def learnt() -> bool:
                async with session.get(adaptive.api + "/v1/job-types") as resp:
                    items = (await resp.json())["items"]
                return sum(int(t["samples"]) >= MIN_SAMPLES for t in items) >= len(WORKLOAD)

            await _until("every type learnt", CAP_S / scale + 60, learnt)
            await asyncio.sleep(2.5)  # the learner's next rounds recompute the schedules
            made = await _feed(session, sim, daemons, phases[1], scale)

            async def done() -> bool:
                for d, jobs in zip(daemons, made, strict=True):
                    async with session.get(d.api + "/v1/watches?status=unknown&limit=1000") as resp:
                        page = await resp.json()
                    running = {w["job_id"] for w in page["watches"]}
                    async with session.get(d.api + "/v1/watches?status=active&limit=1000") as resp:
                        running |= {w["job_id"] for w in (await resp.json())["watches"]}
                    if any(job_id in running for job_id, _ in jobs):
                        return False
                return True

            await _until("every measured job finished", CAP_S / scale + 60, done)
            async with session.get(sim.url.split("/api/")[0] + "/_sim/requests") as resp:
                log = (await resp.json())["requests"]
    _report(res, made, [j.kind for j in phases[1]], log, scale)


def _report(
    res: ScenarioResult,
    made: list[list[tuple[str, float]]],
    kinds: list[int],
    log: list[dict[str, Any]],
    scale: float,
) -> None:
    times: dict[str, list[float]] = {}
    for r in log:
        times.setdefault(r["job_id"], []).append(r["started_at"])
    calls = []
    per_type: list[str] = []
    for strategy, jobs in zip(STRATEGIES, made, strict=True):
        polls, lags = [], []
        by_kind: dict[int, tuple[list[int], list[float]]] = {}
        for (job_id, finish), kind in zip(jobs, kinds, strict=True):
            seen = sorted(times.get(job_id, []))
            after = [t for t in seen if t >= finish]
            if not after:
                continue
            lag = (after[0] - finish) * scale
            polls.append(len(seen))
            lags.append(lag)
            by_kind.setdefault(kind, ([], []))[0].append(len(seen))
            by_kind[kind][1].append(lag)
        per_job = sum(polls) / max(1, len(polls))
        calls.append(per_job)
        res.add(f"live {strategy} calls per finished job", per_job)
        for q in (50, 95, 99):
            res.add(f"live {strategy} detection lag p{q}", percentile(lags, q) if lags else None, "s")
        per_type.append(
            f"live {strategy} per type (calls/job, p95 lag s): "
            + ", ".join(
                f"{WORKLOAD[k].name} {sum(p) / len(p):.1f}, {percentile(lg, 95):.0f}"
                for k, (p, lg) in sorted(by_kind.items())
            )
        )
    res.add("live calls, adaptive / backoff", calls[1] / max(calls[0], 1e-9), "x")
    res.notes.append(
        f"live: both strategies through real daemons and `watcher simulate` at the same time, the same"
        f" scripted durations, time scaled 1/{scale:g} (durations cut at {CAP_S:g} s), {len(made[0])}"
        " measured jobs each after a warm-up; lags on the simulator's clock, scaled back"
    )
    res.notes.extend(per_type)
