"""Tests of the policy-level simulator and `run_policy_bench`: the backoff it replays is the daemon's, the
workload is what SPEC §9 asks for, and a run is deterministic and reports both strategies."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.config.model import PollingConfig
from watcher.models import PollOutcome, PollResult, Source, Watch
from watcher.polling.adaptive.bench import render, run_policy_bench
from watcher.polling.adaptive.model import DurationModels
from watcher.polling.adaptive.sim import DEFAULT_POLICY, DRIFT_TYPE, WORKLOAD, Job, make_jobs, run
from watcher.polling.policy import decide


def iso(ts: float) -> str:
    """An upstream timestamp."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def daemon_polls(job: Job, seed: int) -> tuple[int, float]:
    """(polls, detection time) of one job polled through `watcher.policy.decide`, as the daemon does."""
    rng = random.Random(seed)
    watch = Watch(job_id="j", workspace="w", sources=int(Source.API), registered_at=job.registered)
    now = job.registered
    for polls in range(1, 100_000):
        done = now - job.created >= job.duration
        body = {"id": "j", "status": "success" if done else "active", "updatedAt": iso(now)}
        decision = decide(
            watch, PollResult(PollOutcome.OK, body=body), now, DEFAULT_POLICY, rng, lambda *_: ()
        )
        if decision.final is not None:
            return polls, now
        watch = decision.saved.watch
        now = watch.next_poll_at
    raise AssertionError("never finished")


class TestBackoffIsTheDaemons:
    """The simulator's backoff is the `[polling]` defaults and the daemon's own decision function."""

    def test_defaults_match_the_config(self) -> None:
        """The simulated policy uses the defaults watcher/config.py gives `[polling]`."""
        cfg = PollingConfig()
        assert DEFAULT_POLICY.initial_interval_s == cfg.initial_interval_s
        assert DEFAULT_POLICY.multiplier == cfg.multiplier
        assert DEFAULT_POLICY.max_interval_s == cfg.max_interval_s
        assert DEFAULT_POLICY.jitter == cfg.jitter
        assert DEFAULT_POLICY.max_watch_s == cfg.max_watch_s

    @settings(max_examples=50, deadline=None)
    @given(st.floats(0.0, 5000.0), st.floats(0.0, 1.0), st.integers(0, 2**32))
    def test_same_polls_as_the_daemons_decisions(self, duration: float, late: float, seed: int) -> None:
        """One job, one seed: the simulator makes the polls `decide` schedules, and sees the finish then."""
        created = 1_775_000_000.0
        job = Job(0, created, created + late * duration, duration)
        (out,) = run([job], WORKLOAD[:1], DurationModels(), random.Random(seed))
        polls, seen_at = daemon_polls(job, seed)
        assert out.calls == polls
        assert abs(out.lags[0] - (seen_at - created - duration)) < 1e-6


class TestWorkload:
    """The workload SPEC §9 describes."""

    def test_types_span_seconds_to_an_hour_with_a_heavy_tail_and_two_modes(self) -> None:
        """At least five types, medians from seconds to an hour, one Pareto, one bimodal."""
        medians = [t.median_s for t in WORKLOAD]
        assert len(WORKLOAD) >= 6
        assert min(medians) <= 10.0 and max(medians) >= 3600.0
        assert {t.shape for t in WORKLOAD} == {"lognormal", "pareto", "bimodal"}

    def test_drift_doubles_the_second_half(self) -> None:
        """In the drift phase the drifting type's later jobs run about twice as long."""
        jobs = make_jobs(WORKLOAD, [(100, None), (400, DRIFT_TYPE)], random.Random(1))
        kind = next(i for i, t in enumerate(WORKLOAD) if t.name == DRIFT_TYPE)
        mine = sorted((j for j in jobs if j.kind == kind and j.phase == 1), key=lambda j: j.created)
        first = sorted(j.duration for j in mine[:150])
        last = sorted(j.duration for j in mine[-150:])
        assert 1.6 < last[75] / first[75] < 2.5

    def test_phases_follow_without_a_pause(self) -> None:
        """Each type's arrivals run on from one phase into the next: no gap for a burst's tail to finish."""
        jobs = make_jobs(WORKLOAD, [(200, None), (200, None)], random.Random(3))
        for kind in range(len(WORKLOAD)):
            mine = sorted((j for j in jobs if j.kind == kind), key=lambda j: j.created)
            assert [j.phase for j in mine] == [0] * 200 + [1] * 200
            gaps = [b.created - a.created for a, b in itertools.pairwise(mine)]
            assert gaps[199] < 10 * max(sorted(gaps)[len(gaps) // 2], 1.0)

    def test_registration_before_the_finish(self) -> None:
        """Every job is registered after it is created and no later than it finishes; some late."""
        jobs = make_jobs(WORKLOAD, [(300, None)], random.Random(2))
        assert all(j.created <= j.registered <= j.created + j.duration for j in jobs)
        assert sum(j.registered - j.created > 1.0 for j in jobs) > 0.05 * len(jobs)


class TestPolicyBench:
    """`run_policy_bench` at a small scale: both strategies, the targets, the frontier, deterministic."""

    def test_small_run_reports_both_strategies_and_is_deterministic(self) -> None:
        """The same seed gives the same figures; adaptive makes fewer calls than backoff."""
        first = run_policy_bench(3, per_type=150, window=100, frontier=False)
        again = run_policy_bench(3, per_type=150, window=100, frontier=False)
        for phase in ("main", "drift"):
            assert first[phase] == again[phase]
            assert first[phase]["adaptive"]["calls_per_job"] < first[phase]["backoff"]["calls_per_job"]
            assert first[phase]["backoff"]["jobs"] == 150 * len(WORKLOAD)
        assert first["lag_target_s"] == first["main"]["backoff"]["lag_p95_s"]
        assert [row["name"] for row in first["checks"]] == list(first["passed"])
        assert len(first["checks"]) == 4
        text = render(first)
        assert "adaptive" in text and ("PASS" in text or "FAIL" in text)

    def test_frontier_trades_calls_for_lag(self) -> None:
        """A looser lag target buys fewer calls: the frontier's calls fall as its targets rise."""
        result = run_policy_bench(4, per_type=150, window=100)
        points = result["frontier"]
        assert len(points) == 5
        calls = [p["calls_per_job"] for p in points]
        assert calls[0] > calls[-1]
        assert points[0]["lag_p95_s"] < points[-1]["lag_p95_s"]
