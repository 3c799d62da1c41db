"""Tests of the lag budget across types, the schedule cache and `job.slow` thresholds."""

from __future__ import annotations

import itertools
import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.polling.adaptive.model import DurationModels, TypeModel
from watcher.polling.adaptive.planner import PRICES, Planner, allocate, slow_threshold
from watcher.polling.adaptive.schedule import AdaptiveSettings, Cost
from watcher.polling.adaptive.sim import DEFAULT_POLICY, WORKSPACE, JobType, copy_models, make_jobs, run

# A synthetic mix: one quick tight type, one wide hour-long type, one heavy tail, one bimodal.
MIX = (
    JobType("quick", "lognormal", 8.0, 0.3),
    JobType("long", "lognormal", 2400.0, 0.4),
    JobType("heavy", "pareto", 90.0, 1.3),
    JobType("split", "bimodal", 15.0, 0.3, second_median_s=600.0, share=0.6),
)


@st.composite
def frontiers(draw: st.DrawFn) -> list[tuple[float, list[Cost]]]:
    """A few types, each with a frontier whose calls fall as its lateness rises."""
    types = []
    for _ in range(draw(st.integers(1, 6))):
        steps = draw(st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(0.0, 0.2)), min_size=1, max_size=8))
        calls, exceed = 40.0, 0.0
        costs = []
        for drop, rise in steps:
            costs.append(Cost(calls, exceed, 0.0))
            calls, exceed = max(1.0, calls - drop), min(1.0, exceed + rise)
        types.append((draw(st.floats(0.01, 1.0)), costs[::-1]))  # cheapest price first, as PRICES
    return types


def learnt_mix(per_type: int, seed: int, window: int = 1000) -> DurationModels:
    """Models of the synthetic mix, learnt from `per_type` finishes each."""
    rng = random.Random(seed)
    models = DurationModels(window=window)
    for i in range(per_type):
        for job_type in MIX:
            models.observe((WORKSPACE, job_type.name), job_type.sample(rng), float(i))
    return models


class TestAllocate:
    """The greedy walk down the frontiers spends the pooled budget, and no more."""

    @settings(max_examples=200, deadline=None)
    @given(frontiers(), st.floats(0.0, 0.3))
    def test_stays_within_budget_and_no_single_move_is_left(
        self, types: list[tuple[float, list[Cost]]], budget: float
    ) -> None:
        """Pooled lateness ≤ budget (when the safest choice fits), and no type could still save calls
        within what is left of the budget (six types at most: fewer than the rounds that fill it)."""
        choice = allocate(types, budget)
        safest = sum(w * min(c.exceed for c in costs) for w, costs in types)
        spent = sum(w * costs[r].exceed for (w, costs), r in zip(types, choice, strict=True))
        if safest > budget:
            return
        assert spent <= budget + 1e-9
        for (w, costs), r in zip(types, choice, strict=True):
            for other in costs:
                if other.calls < costs[r].calls - 1e-9:
                    assert spent + w * (other.exceed - costs[r].exceed) > budget - 1e-9

    @settings(max_examples=100, deadline=None)
    @given(frontiers(), st.floats(0.0, 0.3))
    def test_close_to_the_best_allocation(self, types: list[tuple[float, list[Cost]]], budget: float) -> None:
        """On small cases, within one type's largest step of the exhaustive optimum."""
        if len(types) > 3:
            types = types[:3]
        safest = sum(w * min(c.exceed for c in costs) for w, costs in types)
        if safest > budget:
            return
        choice = allocate(types, budget)
        calls = sum(w * costs[r].calls for (w, costs), r in zip(types, choice, strict=True))
        best = math.inf
        for combo in itertools.product(*(range(len(costs)) for _, costs in types)):
            picked = list(zip(types, combo, strict=True))
            if sum(w * costs[r].exceed for (w, costs), r in picked) <= budget:
                best = min(best, sum(w * costs[r].calls for (w, costs), r in picked))
        slack = max(w * (max(c.calls for c in costs) - min(c.calls for c in costs)) for w, costs in types)
        assert best - 1e-9 <= calls <= best + slack + 1e-9

    def test_lateness_goes_where_calls_are_dear(self) -> None:
        """Of a cheap and a dear type, the dear one is allowed to be late first."""
        cheap = [Cost(2.0, 0.3, 0.0), Cost(2.2, 0.0, 0.0)]
        dear = [Cost(10.0, 0.3, 0.0), Cost(60.0, 0.0, 0.0)]
        assert allocate([(0.5, cheap), (0.5, dear)], 0.15) == [1, 0]


class TestPlanner:
    """Schedules kept in step with the models; the pooled p95 meets the target on a mix."""

    def test_pooled_p95_meets_the_target_on_a_mix(self) -> None:
        """Polling a synthetic mix after a warm-up, at most 5 % of finishes are seen later than the target,
        with fewer calls than backoff makes on the same jobs."""
        cfg = AdaptiveSettings(lag_target_s=45.0, window=500)
        jobs = make_jobs(MIX, [(1000, None), (500, None)], random.Random(2))
        models = DurationModels(cfg.window)
        planner = Planner(models, cfg, DEFAULT_POLICY)
        adaptive = run(jobs, MIX, models, random.Random(3), planner=planner)[1]
        backoff = run(jobs, MIX, DurationModels(cfg.window), random.Random(3))[1]
        late = sum(lag > cfg.lag_target_s for lag in adaptive.lags) / len(adaptive.lags)
        assert adaptive.jobs == backoff.jobs == 500 * len(MIX)
        assert late <= 0.05
        assert adaptive.calls_per_job() < 0.8 * backoff.calls_per_job()

    def test_planner_survives_a_restart_through_the_stored_form(self) -> None:
        """Models read back from their bytes give the same schedules as the ones that learnt them."""
        warm = learnt_mix(300, seed=9)
        plans = []
        for models in (warm, copy_models(warm)):
            planner = Planner(models, AdaptiveSettings(), DEFAULT_POLICY)
            for key, model in models:
                planner.note_changed(key, model)
            planner.refresh()
            plans.append({key: planner.schedule(key) for key, _ in models})
        for key, schedule in plans[0].items():
            other = plans[1][key]
            assert schedule is not None and other is not None
            assert schedule.chain() == other.chain()

    def test_below_min_samples_there_is_no_schedule(self) -> None:
        """A type with fewer finishes than min_samples polls the backoff curve."""
        models = DurationModels()
        planner = Planner(models, AdaptiveSettings(min_samples=20), DEFAULT_POLICY)
        key = (WORKSPACE, "young")
        for i in range(19):
            planner.observe(key, 30.0 + i, float(i))
        assert not planner.dirty
        assert planner.refresh() == 0
        assert planner.schedule(key) is None
        planner.observe(key, 31.0, 20.0)
        assert planner.dirty
        assert planner.refresh() == 1
        assert planner.schedule(key) is not None

    def test_recomputes_on_growth_or_drift_not_on_every_finish(self) -> None:
        """A few more finishes like the last keep the cached schedule; a quarter more, or a shift, do not."""
        rng = random.Random(4)
        models = DurationModels()
        planner = Planner(models, AdaptiveSettings(), DEFAULT_POLICY)
        key = (WORKSPACE, "steady")
        for i in range(400):
            planner.observe(key, rng.lognormvariate(math.log(120.0), 0.3), float(i))
        planner.refresh()
        cached = planner.schedule(key)
        for i in range(50):
            planner.observe(key, rng.lognormvariate(math.log(120.0), 0.3), 500.0 + i)
        assert not planner.dirty and planner.schedule(key) is cached
        for i in range(50):
            planner.observe(key, rng.lognormvariate(math.log(120.0), 0.3), 600.0 + i)
        assert planner.dirty  # 100 new of 400: a quarter
        planner.refresh()
        assert planner.schedule(key) is not cached

    def test_a_shift_in_durations_is_noticed_before_a_quarter(self) -> None:
        """Durations that double are noticed at a quantile check, long before a quarter of new finishes."""
        rng = random.Random(5)
        models = DurationModels(window=100)
        planner = Planner(models, AdaptiveSettings(), DEFAULT_POLICY)
        key = (WORKSPACE, "drifting")
        for i in range(200):
            planner.observe(key, rng.lognormvariate(math.log(60.0), 0.2), float(i))
        planner.refresh()
        seen = 0
        while not planner.dirty and seen < 200:
            planner.observe(key, 2.0 * rng.lognormvariate(math.log(60.0), 0.2), 300.0 + seen)
            seen += 1
        assert planner.dirty
        assert seen < 0.25 * 200 + 25

    def test_dropped_types_lose_their_schedule(self) -> None:
        """A type evicted to stay within max_types is planned no more."""
        models = DurationModels(max_types=1)
        planner = Planner(models, AdaptiveSettings(), DEFAULT_POLICY)
        for i in range(30):
            planner.observe((WORKSPACE, "old"), 10.0, float(i))
        planner.refresh()
        assert planner.schedule((WORKSPACE, "old")) is not None
        for i in range(30):
            planner.observe((WORKSPACE, "new"), 10.0, 100.0 + i)
        planner.refresh()
        assert planner.schedule((WORKSPACE, "old")) is None
        assert planner.schedule((WORKSPACE, "new")) is not None

    def test_delay_uses_the_schedule(self) -> None:
        """A planned type's next poll comes from its schedule, an unknown type's from backoff."""
        models = learnt_mix(200, seed=6)
        planner = Planner(models, AdaptiveSettings(lag_target_s=60.0), DEFAULT_POLICY)
        for key, model in models:
            planner.note_changed(key, model)
        assert planner.refresh() == len(MIX)
        # A job of the hour-long type, just registered: the first gap skips ahead far past backoff's.
        first = planner.delay((WORKSPACE, "long"), 0.0, 0, random.Random(1))
        assert first > 300.0
        assert planner.delay(None, 0.0, 0, random.Random(1)) <= DEFAULT_POLICY.initial_interval_s * 1.2
        assert len(PRICES) > 10

    def test_type_rows_list_every_type(self) -> None:
        """What GET /v1/job-types shows: one row per type with its samples and quantiles."""
        planner = Planner(learnt_mix(50, seed=7), AdaptiveSettings(), DEFAULT_POLICY)
        rows = {row["name"]: row for row in planner.type_rows()}
        assert set(rows) == {t.name for t in MIX}
        quick = rows["quick"]
        assert quick["workspace"] == WORKSPACE and quick["samples"] == 50
        assert isinstance(quick["p50_s"], float) and 5.0 < quick["p50_s"] < 13.0


class TestSlowThreshold:
    """`job.slow` fires past the type's slow quantile, and only with a model."""

    def test_none_without_a_usable_model(self) -> None:
        """No model, or too few finishes: no threshold."""
        assert slow_threshold(None) is None
        model = TypeModel()
        for i in range(19):
            model.add(10.0, float(i))
        assert slow_threshold(model, min_samples=20) is None

    def test_the_quantile_of_the_type(self) -> None:
        """With a model, the threshold is the type's slow_quantile duration."""
        rng = random.Random(8)
        model = TypeModel()
        values = [rng.lognormvariate(math.log(100.0), 0.5) for _ in range(1000)]
        for i, v in enumerate(values):
            model.add(v, float(i))
        threshold = slow_threshold(model, 0.99)
        exact = sorted(values)[989]
        assert threshold is not None and abs(threshold - exact) <= 0.05 * exact
        lower = slow_threshold(model, 0.9)
        assert lower is not None and lower < threshold
