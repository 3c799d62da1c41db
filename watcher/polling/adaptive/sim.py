"""A policy-level simulator: jobs of several types polled by a strategy in simulated time, no I/O.

Each job is created, registered (most as they are created, some late), and polled until a poll sees it
finished; a poll is one upstream call and never fails, so only the schedule is measured. Detection lag is
the detecting poll's time minus the finish. Models learn from every detected finish under both strategies,
as they do in the daemon. Everything is drawn from seeded generators: the same seed gives the same jobs,
the same jitter and the same figures.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from watcher.polling.adaptive.model import DurationModels, TypeKey, TypeModel
from watcher.polling.adaptive.planner import Planner
from watcher.polling.policy import PollingPolicy, poll_delay

WORKSPACE = "bench"
# Backoff as the daemon runs it: the `[polling]` defaults of watcher/config.py (SPEC §3).
DEFAULT_POLICY = PollingPolicy(
    initial_interval_s=5.0,
    multiplier=1.5,
    max_interval_s=60.0,
    jitter=0.2,
    max_watch_s=86_400.0,
    not_found_limit=5,
    error_backoff_max_s=300.0,
)
LATE_SHARE = 0.1  # jobs registered after they were created (a client that watches a running job)
MAX_DURATION_S = 4 * 3600.0  # the heavy tail is cut here so every job of a run finishes

Shape = Literal["lognormal", "pareto", "bimodal"]


@dataclass(frozen=True, slots=True)
class JobType:
    """One kind of job and its duration distribution (seconds)."""

    name: str
    shape: Shape
    median_s: float
    sigma: float = 0.0  # log-normal spread; Pareto shape alpha for "pareto"
    # bimodal: `share` of the jobs take `median_s`, the rest `second_median_s` (both log-normal, `sigma`)
    second_median_s: float = 0.0
    share: float = 1.0

    def sample(self, rng: random.Random) -> float:
        """One duration."""
        if self.shape == "pareto":
            # Pareto with this median: scale = median / 2^(1/alpha).
            scale = self.median_s / 2.0 ** (1.0 / self.sigma)
            value = scale * rng.paretovariate(self.sigma)
        elif self.shape == "bimodal":
            median = self.median_s if rng.random() < self.share else self.second_median_s
            value = rng.lognormvariate(math.log(median), self.sigma)
        else:
            value = rng.lognormvariate(math.log(self.median_s), self.sigma)
        return min(MAX_DURATION_S, float(value))

    def describe(self) -> str:
        """A short human description, for the report."""
        if self.shape == "pareto":
            return f"Pareto, median {self.median_s:g} s, alpha {self.sigma:g}, cut at {MAX_DURATION_S:g} s"
        if self.shape == "bimodal":
            return (
                f"bimodal: {self.share:.0%} log-normal median {self.median_s:g} s, the rest median "
                f"{self.second_median_s:g} s, sigma {self.sigma:g}"
            )
        return f"log-normal, median {self.median_s:g} s, sigma {self.sigma:g}"


# Medians from seconds to an hour; one heavy tail, one bimodal; every type as frequent as the others.
WORKLOAD: tuple[JobType, ...] = (
    JobType("thumbnail", "lognormal", 5.0, 0.4),
    JobType("transcode", "lognormal", 60.0, 0.3),
    JobType("report", "lognormal", 300.0, 0.5),
    JobType("train", "lognormal", 3600.0, 0.3),
    JobType("crawl", "pareto", 60.0, 1.2),
    JobType("ingest", "bimodal", 20.0, 0.3, second_median_s=900.0, share=0.7),
)
DRIFT_TYPE = "report"  # its durations double halfway through the drift phase


@dataclass(frozen=True, slots=True)
class Job:
    """One simulated job: its type, when it was created and registered, how long it runs, its phase."""

    kind: int  # index into the workload
    created: float
    registered: float
    duration: float
    phase: int = 0


def make_jobs(
    workload: Sequence[JobType],
    phases: Sequence[tuple[int, str | None]],
    rng: random.Random,
    *,
    interval_s: float = 10.0,
) -> list[Job]:
    """Jobs of every type arriving as Poisson streams (mean `interval_s` apart), phase after phase.

    Each phase is (jobs per type, drifting type or None); with a drifting type, its jobs created in the
    second half of that phase run twice as long. Arrivals never pause between phases: a model learns
    from finishes in the order they happen, and a pause would leave only a burst's longest jobs to
    finish, which no steady stream of jobs does.
    """
    jobs: list[Job] = []
    for kind, job_type in enumerate(workload):
        t = 0.0
        for phase, (per_type, drift) in enumerate(phases):
            begin = t
            for _ in range(per_type):
                t += rng.expovariate(1.0 / interval_s)
                duration = job_type.sample(rng)
                if drift == job_type.name and t - begin > per_type * interval_s / 2.0:
                    duration = min(MAX_DURATION_S, 2.0 * duration)
                late = rng.random() < LATE_SHARE
                delay = rng.uniform(0.0, duration) if late else rng.uniform(0.0, 1.0)
                jobs.append(Job(kind, t, t + min(delay, duration), duration, phase))
    jobs.sort(key=lambda j: j.registered)
    return jobs


@dataclass(slots=True)
class Outcome:
    """What one strategy did to one set of jobs."""

    calls: int = 0
    jobs: int = 0
    lags: list[float] = field(default_factory=list)
    calls_by_kind: dict[int, int] = field(default_factory=dict)
    lags_by_kind: dict[int, list[float]] = field(default_factory=dict)

    def calls_per_job(self) -> float:
        """Upstream calls per finished job."""
        return self.calls / max(1, self.jobs)

    def lag(self, q: float) -> float:
        """The q-th percentile (0..100) of detection lag, nearest rank."""
        return percentile(self.lags, q)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def copy_models(models: DurationModels) -> DurationModels:
    """An independent copy through the stored form, as a restart or a second replica would load it."""
    out = DurationModels(models.window, models.max_types)
    for key, model in models:
        out.merge(key, TypeModel.from_bytes(model.to_bytes()))
    return out


def run(
    jobs: Sequence[Job],
    workload: Sequence[JobType],
    models: DurationModels,
    rng: random.Random,
    *,
    planner: Planner | None = None,
    adaptive_from: int = 1,
    policy: PollingPolicy = DEFAULT_POLICY,
) -> list[Outcome]:
    """Poll every job until seen finished; one Outcome per phase.

    Jobs of phase `adaptive_from` or later follow the planner's schedules when there is one, earlier
    ones (the warm-up) the backoff curve. Polls are processed in time order across all jobs, so models
    (and schedules) learn from finishes as they are detected, whatever polled them, as in the daemon.
    """
    keys: list[TypeKey] = [(WORKSPACE, t.name) for t in workload]
    outs = [Outcome() for _ in range(max((j.phase for j in jobs), default=0) + 1)]
    # (time, job index, streak): the first poll is at registration and sees the first status (a change).
    heap: list[tuple[float, int, int]] = [(job.registered, i, 0) for i, job in enumerate(jobs)]
    heapq.heapify(heap)
    while heap:
        now, i, streak = heapq.heappop(heap)
        job = jobs[i]
        out = outs[job.phase]
        out.calls += 1
        out.calls_by_kind[job.kind] = out.calls_by_kind.get(job.kind, 0) + 1
        age = now - job.created
        if age >= job.duration:
            lag = age - job.duration
            out.jobs += 1
            out.lags.append(lag)
            out.lags_by_kind.setdefault(job.kind, []).append(lag)
            finished_at = job.created + job.duration
            if planner is None:
                models.observe(keys[job.kind], job.duration, finished_at)
            else:
                planner.observe(keys[job.kind], job.duration, finished_at)
            continue
        if planner is None or job.phase < adaptive_from:
            delay = poll_delay(streak, policy, rng)
        else:
            if planner.dirty:  # schedules are only needed once a job polls by them
                planner.refresh()
            delay = planner.delay(keys[job.kind], age, streak, rng)
        heapq.heappush(heap, (now + delay, i, streak + 1))
    return outs
