"""Property tests of the adaptive schedule over many duration distributions (SPEC §12).

Gaps stay within [min_interval_s, max_interval_s], poll ages only grow, no window ever holds a storm of
polls, past the model the backoff curve of SPEC §5 decides, and a watch registered late is scheduled from
its first poll as if it had been there from the start.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.polling.adaptive.model import TypeModel
from watcher.polling.adaptive.schedule import (
    AdaptiveSettings,
    Distribution,
    Schedule,
    ScheduleProblem,
    distribution_of,
    jitter_span,
    next_poll_delay,
)
from watcher.polling.policy import PollingPolicy, poll_delay

POLICY = PollingPolicy(
    initial_interval_s=5.0,
    multiplier=1.5,
    max_interval_s=60.0,
    jitter=0.2,
    max_watch_s=86_400.0,
    not_found_limit=5,
    error_backoff_max_s=300.0,
)
PRICES = st.sampled_from([0.5, 4.0, 64.0, 1024.0, 65536.0])


@st.composite
def learnt(draw: st.DrawFn) -> TypeModel:
    """A model of 20 to 1500 finishes from a log-normal, bimodal or Pareto distribution."""
    shape = draw(st.sampled_from(["lognormal", "bimodal", "pareto"]))
    median = draw(st.floats(0.5, 20_000.0))
    sigma = draw(st.floats(0.02, 2.0))
    n = draw(st.integers(20, 600))
    rng = random.Random(draw(st.integers(0, 2**32)))
    model = TypeModel(window=1000)
    for i in range(n):
        if shape == "pareto":
            value = median * rng.paretovariate(1.0 + sigma)
        elif shape == "bimodal" and rng.random() < 0.4:
            value = rng.lognormvariate(math.log(median * 30.0), sigma)
        else:
            value = rng.lognormvariate(math.log(median), sigma)
        model.add(min(value, 200_000.0), float(i))
    return model


adaptive_settings = st.builds(
    AdaptiveSettings,
    lag_target_s=st.floats(5.0, 600.0),
    min_interval_s=st.floats(0.5, 5.0),
    max_interval_s=st.floats(300.0, 3600.0),
)


def solved(model: TypeModel, cfg: AdaptiveSettings, price: float, policy: PollingPolicy = POLICY) -> Schedule:
    """The type's schedule at one price of lateness (the lag term as the planner sets it)."""
    ages, probs = model.cdf()
    dist, top = distribution_of(ages, probs, model.samples)
    problem = ScheduleProblem(dist, top, cfg.lag_target_s, cfg, policy)
    return problem.solve(price, 5.0 / cfg.lag_target_s)


def poll_ages(
    schedule: Schedule, cfg: AdaptiveSettings, start: float, until: float, seed: int
) -> list[float]:
    """The ages at which one job, first polled at age `start`, is polled until `until`."""
    rng = random.Random(seed)
    ages = [start]
    streak = 0
    while ages[-1] < until and len(ages) < 100_000:
        ages.append(ages[-1] + next_poll_delay(schedule, ages[-1], streak, POLICY, cfg, rng))
        streak += 1
    return ages


class TestSchedule:
    """The policy a type's schedule gives at any age."""

    @settings(max_examples=60, deadline=None)
    @given(learnt(), adaptive_settings, PRICES, st.integers(0, 2**32))
    def test_gaps_within_bounds_and_ages_grow(
        self, model: TypeModel, cfg: AdaptiveSettings, price: float, seed: int
    ) -> None:
        """Inside the model every gap is within [min_interval_s, max_interval_s]; ages strictly grow."""
        schedule = solved(model, cfg, price)
        ages = poll_ages(schedule, cfg, 0.0, schedule.top, seed)
        assert len(ages) < 100_000
        for a, b in itertools.pairwise(ages):
            assert b > a
            if a < schedule.top:
                assert cfg.min_interval_s - 1e-9 <= b - a <= cfg.max_interval_s + 1e-9
        chain = schedule.chain()
        assert chain == sorted(set(chain))
        assert chain[-1] == schedule.top

    @settings(max_examples=60, deadline=None)
    @given(learnt(), adaptive_settings, PRICES, st.integers(0, 2**32), st.floats(0.0, 1.0))
    def test_never_a_poll_storm(
        self, model: TypeModel, cfg: AdaptiveSettings, price: float, seed: int, start: float
    ) -> None:
        """No 60-second window holds more polls than a min_interval_s (or backoff's) cadence allows."""
        schedule = solved(model, cfg, price)
        ages = poll_ages(schedule, cfg, start * schedule.top, schedule.top + 3600.0, seed)
        floor = min(cfg.min_interval_s, POLICY.initial_interval_s * (1 - POLICY.jitter))
        most = math.floor(60.0 / floor) + 1
        j = 0
        for i, a in enumerate(ages):
            while ages[j] < a - 60.0:
                j += 1
            assert i - j + 1 <= most

    @settings(max_examples=60, deadline=None)
    @given(
        learnt(), adaptive_settings, PRICES, st.integers(0, 2**32), st.integers(0, 50), st.floats(0.0, 5.0)
    )
    def test_tail_falls_back_to_backoff(
        self, model: TypeModel, cfg: AdaptiveSettings, price: float, seed: int, streak: int, past: float
    ) -> None:
        """At or past the schedule's top the delay is exactly the backoff curve's, same streak, same draw."""
        schedule = solved(model, cfg, price)
        age = schedule.top * (1.0 + past)
        got = next_poll_delay(schedule, age, streak, POLICY, cfg, random.Random(seed))
        assert got == poll_delay(streak, POLICY, random.Random(seed))

    @settings(max_examples=40, deadline=None)
    @given(learnt(), adaptive_settings, st.integers(0, 2**32), st.integers(0, 20))
    def test_without_a_schedule_or_an_age_backoff_decides(
        self, model: TypeModel, cfg: AdaptiveSettings, seed: int, streak: int
    ) -> None:
        """A type with too few finishes (no schedule) or a job without createdAt polls the backoff curve."""
        expected = poll_delay(streak, POLICY, random.Random(seed))
        assert next_poll_delay(None, 10.0, streak, POLICY, cfg, random.Random(seed)) == expected
        schedule = solved(model, cfg, 64.0)
        assert next_poll_delay(schedule, None, streak, POLICY, cfg, random.Random(seed)) == expected

    @settings(max_examples=60, deadline=None)
    @given(learnt(), adaptive_settings, PRICES)
    def test_a_late_watch_joins_the_schedule(
        self, model: TypeModel, cfg: AdaptiveSettings, price: float
    ) -> None:
        """Registered at any age of the chain, a watch polls next where one watched from creation would."""
        schedule = solved(model, cfg, price)
        chain = schedule.chain()
        for a, b in itertools.pairwise(chain):
            assert schedule.next_age(a) == b

    @settings(max_examples=60, deadline=None)
    @given(learnt(), adaptive_settings, st.floats(0.25, 0.75))
    def test_a_late_watch_in_the_body_is_polled_within_the_target(
        self, model: TypeModel, cfg: AdaptiveSettings, level: float
    ) -> None:
        """Where finishes are dense and lateness is dear, a late watch's next poll is about T away."""
        flat = replace(POLICY, jitter=0.0)
        ages, probs = model.cdf()
        dist, top = distribution_of(ages, probs, model.samples)
        problem = ScheduleProblem(dist, top, cfg.lag_target_s, cfg, flat)
        schedule = problem.solve(1e6, 0.0)
        age = dist.quantile(level)
        step = max(b - a for a, b in itertools.pairwise(problem.grid))
        nxt = schedule.next_age(age)
        if nxt is not None:  # within a grid step of the top, backoff polls
            # The nearest grid age stands for `age` (half a step away at most), and gaps are whole steps.
            assert age < nxt <= age + max(cfg.lag_target_s, cfg.min_interval_s) + 2 * step


class TestProblem:
    """The dynamic programme and its evaluation."""

    def test_higher_price_never_more_lateness(self) -> None:
        """Pricing lateness higher buys fewer late detections with more calls."""
        rng = random.Random(7)
        model = TypeModel()
        for i in range(1000):
            model.add(rng.lognormvariate(math.log(3600.0), 0.3), float(i))
        ages, probs = model.cdf()
        dist, top = distribution_of(ages, probs, model.samples)
        cfg = AdaptiveSettings(lag_target_s=60.0)
        problem = ScheduleProblem(dist, top, 60.0, cfg, POLICY)
        costs = [problem.evaluate(problem.solve(p, 0.0)) for p in (1.0, 16.0, 256.0, 4096.0)]
        assert [c.exceed for c in costs] == sorted((c.exceed for c in costs), reverse=True)
        assert [c.calls for c in costs] == sorted(c.calls for c in costs)
        assert costs[0].exceed > 0.5 > 0.02 > costs[-1].exceed

    def test_evaluation_matches_polling_one_type(self) -> None:
        """The expected calls and lateness the planner believes are what polling 4,000 jobs measures."""
        rng = random.Random(11)
        model = TypeModel(window=2000)
        for i in range(2000):
            model.add(rng.lognormvariate(math.log(900.0), 0.4), float(i))
        ages, probs = model.cdf()
        dist, top = distribution_of(ages, probs, model.samples)
        cfg = AdaptiveSettings(lag_target_s=50.0)
        problem = ScheduleProblem(dist, top, 50.0, cfg, POLICY)
        schedule = problem.solve(64.0, 5.0 / 50.0)
        believed = problem.evaluate(schedule)
        calls = late = 0
        jobs = random.Random(12)
        for _ in range(4000):
            duration = jobs.lognormvariate(math.log(900.0), 0.4)
            seen = poll_ages(schedule, cfg, 0.0, duration, jobs.randrange(2**32))
            calls += len(seen)
            late += seen[-1] - duration > 50.0
        assert abs(calls / 4000 - believed.calls) <= 0.1 * believed.calls
        assert abs(late / 4000 - believed.exceed) <= 0.02 + 0.2 * believed.exceed

    def test_distribution_interpolates(self) -> None:
        """F rises linearly between points; partial means integrate it."""
        dist = Distribution([0.0, 10.0, 20.0], [0.0, 0.5, 1.0])
        assert dist.cdf(5.0) == 0.25
        assert dist.cdf(30.0) == 1.0
        assert dist.quantile(0.75) == 15.0
        assert math.isclose(dist.partial_mean(20.0), 10.0)

    def test_jitter_span_is_bounded_by_backoffs(self) -> None:
        """A long jump is jittered by no more than backoff's longest delay is."""
        assert jitter_span(3000.0, POLICY) == POLICY.max_interval_s
        assert jitter_span(10.0, POLICY) == 10.0


class TestDegenerateTypes:
    """Types whose jobs all take the same time, or no time at all, get a sensible schedule."""

    def test_jobs_that_all_take_the_same_time_are_polled_once_just_after(self) -> None:
        """Thirty jobs of exactly 42 s: one poll at registration, one just after 42 s, then backoff."""
        model = TypeModel()
        for i in range(30):
            model.add(42.0, float(i))
        chain = solved(model, AdaptiveSettings(lag_target_s=60.0), 64.0).chain()
        assert len(chain) == 2 and 42.0 <= chain[1] <= 45.0

    def test_few_samples_still_look_below_the_shortest_job_seen(self) -> None:
        """Twenty hour-long jobs: about 1/21 of the type finishes before the shortest of them, so the
        schedule's first poll after registration comes before it (without that mass it came after, and
        every job a little shorter than those seen was detected a whole skip late)."""
        rng = random.Random(4)
        few = TypeModel()
        for i in range(20):
            few.add(rng.lognormvariate(math.log(3600.0), 0.3), float(i))
        shortest = few.quantile(0.0)
        assert shortest is not None
        ages, probs = few.cdf()
        dist, _ = distribution_of(ages, probs, few.samples)
        assert 0.03 < dist.cdf(shortest) < 0.06 and dist.first < 0.9 * shortest
        assert solved(few, AdaptiveSettings(lag_target_s=60.0), 64.0).chain()[1] < shortest

    def test_jobs_that_finish_at_once_leave_it_to_backoff(self) -> None:
        """Jobs finished when created: nothing to schedule, every delay is the backoff curve's."""
        model = TypeModel()
        for i in range(30):
            model.add(0.0, float(i))
        cfg = AdaptiveSettings(lag_target_s=60.0)
        schedule = solved(model, cfg, 64.0)
        assert schedule.chain() == [0.0]
        delay = next_poll_delay(schedule, 0.0, 0, POLICY, cfg, random.Random(1))
        assert delay == poll_delay(0, POLICY, random.Random(1))

    def test_zero_length_jobs_stay_an_atom(self) -> None:
        """Half of few jobs take no time: the smoothed distribution keeps that mass at age 0."""
        model = TypeModel()
        for i in range(30):
            model.add(0.0 if i % 2 else 100.0, float(i))
        ages, probs = model.cdf()
        dist, _ = distribution_of(ages, probs, model.samples)
        assert 0.45 <= dist.cdf(0.0) <= 0.55
        assert dist.cdf(50.0) < 0.6
