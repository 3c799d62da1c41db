"""`upstream-calls`: what polling costs upstream and how late it notices, for a realistic mix of jobs.

Job durations are log-normal with a median of 2 minutes (sigma 1, capped at 15 minutes); jobs arrive
steadily and are registered as they are created; the daemon runs the default `[polling]` settings. To finish
in seconds the run is time-scaled: every interval, duration and rate is divided by `SCALE` and every time
measured is multiplied back, so the figures read as real seconds. Jobs go through the real pipeline: the
simulator, the watch-list file (SIGHUP after each wave), the daemon, a receiver timing every `job.success`.

Same-run baseline: the pure polling policy (`watcher.polling.policy`) replayed without I/O on the same
durations and registration times, i.e. what the schedule alone costs. Measured above it is the pipeline's
own delay.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from statistics import fmean
from typing import Any

import aiohttp

from watcher.bench import harness
from watcher.bench.latency import new_secret, percentile, wait_deliveries
from watcher.bench.report import ScenarioResult
from watcher.polling.policy import PollingPolicy, poll_delay

SCALE = 60.0  # a minute of real time per second of the run
MEDIAN_S, SIGMA, CAP_S = 120.0, 1.0, 900.0
# The defaults of `[polling]` and `[upstream] rate_limit_per_s` (SPEC §3, config.example.toml).
DEFAULTS = {"initial_interval_s": 5.0, "multiplier": 1.5, "max_interval_s": 60.0, "jitter": 0.2}
DEFAULT_RATE_PER_S = 50.0


def durations(n: int, seed: int) -> list[float]:
    """`n` job durations in real seconds: log-normal around `MEDIAN_S`, capped at `CAP_S`."""
    rng = random.Random(seed)
    return [min(CAP_S, rng.lognormvariate(math.log(MEDIAN_S), SIGMA)) for _ in range(n)]


def model(durations_s: list[float], offsets_s: list[float], seed: int) -> tuple[float, float]:
    """(mean polls per job, mean detection lag) of the policy alone, registration `offset` after creation."""
    cfg = DEFAULTS
    policy = PollingPolicy(
        cfg["initial_interval_s"], cfg["multiplier"], cfg["max_interval_s"], cfg["jitter"],
        max_watch_s=86_400.0, not_found_limit=5, error_backoff_max_s=300.0,
    )  # fmt: skip
    rng = random.Random(seed)
    polls, lags = [], []
    for d, offset in zip(durations_s, offsets_s, strict=True):
        t, n, streak = offset, 1, 0  # the first poll, at registration, sees the first status: a change
        while t < d:
            t += poll_delay(streak, policy, rng)
            n += 1
            streak += 1
        polls.append(n)
        lags.append(t - d)
    return fmean(polls), fmean(lags)


async def _create(session: aiohttp.ClientSession, sim: harness.Child, job_id: str, after_s: float) -> None:
    spec = {"id": job_id, "status": "active", "script": [[after_s, "success"]]}
    async with session.post(sim.url.split("/api/")[0] + "/_sim/jobs", json=spec) as resp:
        resp.raise_for_status()


def _write_watchlist(path: Any, ids: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{j}\n" for j in ids), encoding="utf-8")
    os.replace(tmp, path)  # atomic: the daemon never reads half a file


async def run(ctx: harness.Context) -> ScenarioResult:
    """Waves of jobs created and registered together; every webhook and upstream request accounted for."""
    res = ScenarioResult("upstream-calls")
    scale = SCALE * (10 if ctx.quick else 1)
    jobs, waves, arrive_s = (40, 8, 0.5) if ctx.quick else (300, 50, 5.0)
    ids, dur = harness.job_ids(jobs, seed=11), durations(jobs, seed=11)
    watchlist = ctx.workdir / "upstream-calls.watchlist"
    watchlist.write_text("")
    secret = new_secret()
    async with harness.simulator(ctx.workdir) as sim, harness.sink(ctx.workdir, secret) as rx:
        port = harness.free_port()
        config = harness.write_config(
            ctx.workdir / "upstream-calls.toml",
            upstream_url=sim.url,
            store_url=harness.fresh_store_url(ctx.store, ctx.workdir, "upstream-calls"),
            api_port=port,
            upstream={"rate_limit_per_s": DEFAULT_RATE_PER_S * scale},
            polling={
                **{k: (v / scale if k.endswith("_s") else v) for k, v in DEFAULTS.items()},
                "max_watch_s": 86_400.0 / scale,
                "error_backoff_max_s": 300.0 / scale,
            },
            webhooks=[{"name": "bench", "url": rx.url, "secret": secret}],
            watchlist=watchlist,
        )
        ctx.say(
            f"upstream-calls: {jobs} jobs, time scaled 1/{scale:g}, about {(arrive_s + CAP_S / scale):.0f}s"
        )
        async with (
            harness.daemon(ctx.workdir, config, port, name="upstream-calls-daemon") as d,
            aiohttp.ClientSession() as s,
        ):
            per_wave = math.ceil(jobs / waves)
            waves_of = [list(range(w, min(jobs, w + per_wave))) for w in range(0, jobs, per_wave)]
            registered: list[str] = []
            for batch in waves_of:
                wave_started = time.monotonic()
                await asyncio.gather(*(_create(s, sim, ids[i], dur[i] / scale) for i in batch))
                registered += [ids[i] for i in batch]
                _write_watchlist(watchlist, registered)
                d.hangup()
                await asyncio.sleep(max(0.0, arrive_s / waves - (time.monotonic() - wave_started)))
            deadline_s = (CAP_S + 4 * DEFAULTS["max_interval_s"]) / scale + 60
            got = await wait_deliveries(rx, s, jobs, deadline_s)
            log = await _requests(s, sim)
    _report(res, ids, dur, got, log, scale)
    return res


async def _requests(session: aiohttp.ClientSession, sim: harness.Child) -> list[dict[str, Any]]:
    async with session.get(sim.url.split("/api/")[0] + "/_sim/requests") as resp:
        return list((await resp.json())["requests"])


def _report(
    res: ScenarioResult,
    ids: list[str],
    dur: list[float],
    got: list[dict[str, Any]],
    log: list[dict[str, Any]],
    scale: float,
) -> None:
    by_job: dict[str, list[float]] = {}
    for r in log:
        by_job.setdefault(r["job_id"], []).append(r["started_at"])
    finished = {d["job_id"]: d for d in got if d["type"] == "job.success"}
    # Registration offset: first request minus creation; the creation time is the script's origin.
    offsets, lags, polls = [], [], []
    for job_id, d_s in zip(ids, dur, strict=True):
        delivery = finished.get(job_id)
        first = min(by_job.get(job_id, [math.inf]))
        if delivery is None or first == math.inf:
            continue
        created = delivery["updated_at"] - d_s / scale
        offsets.append(max(0.0, (first - created) * scale))
        lags.append((delivery["detected_at"] - delivery["updated_at"]) * scale)
        polls.append(len(by_job[job_id]))
    model_polls, model_lag = model(
        [d for j, d in zip(ids, dur, strict=True) if j in finished], offsets, seed=3
    )
    res.add("jobs finished and delivered", len(lags))
    res.add("median job duration", percentile(dur, 50), "s")
    res.add("requests per finished job", fmean(polls), "")
    res.add("  policy alone (baseline)", model_polls, "")
    res.add("mean detection lag", fmean(lags), "s")
    res.add("  policy alone (baseline)", model_lag, "s")
    res.add("p95 detection lag", percentile(lags, 95), "s")
    res.add("mean registration delay", fmean(offsets), "s")
    res.notes.append(
        f"time scaled 1/{scale:g}: durations log-normal (median {MEDIAN_S:g}s, sigma {SIGMA:g},"
        f" cap {CAP_S:g}s), default [polling]; every time above is scaled back to real seconds"
    )
