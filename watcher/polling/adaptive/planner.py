"""The lag budget: which type may be late, so that the pooled p95 meets the target at the fewest calls.

`adaptive_lag_target_s` is a p95 over all finished jobs, not per type: 5 % of all finishes may be seen
later than T. A detection that is late costs the same whichever type it belongs to, but buying it back
costs very different numbers of calls: a few for a type that finishes within seconds, dozens for a wide
type that runs for an hour. So we minimise sum share·calls subject to sum share·P(lag > T) ≤ 5 %. Lagrangian
relaxation splits this per type (calls + nu·P(lag > T)), with one price nu for all: each type traces its
frontier over a ladder of prices once, and a greedy walk down the frontiers' convex hulls, cheapest saving
first, spends the budget. Types without a model poll the backoff curve and are charged as such.

The planner also caches each type's schedule and decides when a model changed enough to recompute it.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Literal

from watcher.polling.adaptive.model import DurationModels, TypeKey, TypeModel
from watcher.polling.adaptive.schedule import (
    AdaptiveSettings,
    Cost,
    Schedule,
    ScheduleProblem,
    distribution_of,
    next_poll_delay,
)
from watcher.polling.policy import PollingPolicy

# Prices of one late detection, in calls: from where a call is too dear to where coverage is total.
PRICES = tuple(2.0 ** (k / 2.0) for k in range(-2, 35))
P95_SHARE = 0.05  # the share of finishes a p95 target lets be late
# Calls one job's mean lag of T is worth: breaks ties towards earlier polls, bounds the skipped regions.
LAG_WEIGHT = 5.0
# A type without a model polls the backoff curve; the target is about backoff's own p95, so charge it 5 %.
UNMODELLED_EXCEED = 0.05
# Recompute a type's schedule after this share of new finishes, or when a quantile moved this much.
RECOMPUTE_SHARE = 0.25
QUANTILE_CHECK_EVERY = 25
QUANTILE_MOVE = 0.10
_CHECK_LEVELS = (0.1, 0.5, 0.9)

FILL_ROUNDS = 8
# The share of the 5 % budget the planner spends. The rest covers what the models do not know: a type
# learnt from a few dozen jobs, jobs registered late, the jitter. At 0.8 the pooled p95 held after a long
# warm-up (thousands of jobs per type) but came out 6-18 % over with 40-200 jobs per type; at 0.6 it held
# with 40, 200 and 2,000 per type on three seeds, for about 0.03-0.1 x backoff's calls more.
HEADROOM = 0.6

Objective = Literal["exceed", "lag"]


@dataclass(slots=True)
class _TypePlan:
    observed: int  # model.observed when the frontier was traced
    samples: int
    quantiles: tuple[float, ...]
    costs: list[Cost]  # one per price
    rung: int = -1  # the price the schedule was solved for
    schedule: Schedule | None = None


def slow_threshold(
    model: TypeModel | None, slow_quantile: float = 0.99, min_samples: int = 20
) -> float | None:
    """The duration (s) past which a job of this type is slow (`job.slow`); None without a usable model."""
    if model is None or model.samples < max(1, min_samples):
        return None
    return model.quantile(slow_quantile)


def allocate(types: list[tuple[float, list[Cost]]], budget: float) -> list[int]:
    """For each (weight, costs per price) the price index to use: least sum w·calls, sum w·exceed ≤ budget.

    Starts every type at its safest price and walks down the convex hulls of the frontiers, the move that
    saves most calls per unit of lateness first, skipping moves that no longer fit the budget; then spends
    what is left on the single moves (on the hull or off it) that save most.
    """
    choice: list[int] = []
    hulls: list[list[int]] = []
    spent = 0.0
    heap: list[tuple[float, int, int]] = []
    for i, (weight, costs) in enumerate(types):
        hull = _hull(costs)
        hulls.append(hull)
        choice.append(hull[0])
        spent += weight * costs[hull[0]].exceed
        _push(heap, i, 0, hull, costs)
    while heap:
        _, i, step = heapq.heappop(heap)
        weight, costs = types[i]
        here, there = costs[hulls[i][step]], costs[hulls[i][step + 1]]
        extra = weight * (there.exceed - here.exceed)
        if spent + extra > budget:
            continue
        spent += extra
        choice[i] = hulls[i][step + 1]
        _push(heap, i, step + 1, hulls[i], costs)
    # The hull walk stops where its next step no longer fits; a point off the hull may still fit. Each
    # round scans every type's frontier, so a few rounds only: what is left of the budget is small.
    for _ in range(FILL_ROUNDS):
        best: tuple[float, int, int] | None = None
        for i, (weight, costs) in enumerate(types):
            here = costs[choice[i]]
            for r, there in enumerate(costs):
                saving = weight * (here.calls - there.calls)
                extra = weight * (there.exceed - here.exceed)
                if saving > 1e-12 and spent + extra <= budget and (best is None or saving > best[0]):
                    best = (saving, i, r)
        if best is None:
            break
        _, i, r = best
        weight, costs = types[i]
        spent += weight * (costs[r].exceed - costs[choice[i]].exceed)
        choice[i] = r
    return choice


def _hull(costs: list[Cost]) -> list[int]:
    """Price indices on the lower convex hull of (exceed, calls), from least exceedance to fewest calls."""
    order = sorted(range(len(costs)), key=lambda r: (costs[r].exceed, costs[r].calls))
    hull: list[int] = []
    for r in order:
        if hull and costs[r].calls >= costs[hull[-1]].calls:
            continue  # more lateness for no fewer calls
        while len(hull) >= 2:
            a, b = costs[hull[-2]], costs[hull[-1]]
            c = costs[r]
            # b sits above the chord from a to c: never the best trade, drop it.
            if (b.calls - a.calls) * (c.exceed - a.exceed) >= (c.calls - a.calls) * (b.exceed - a.exceed):
                hull.pop()
            else:
                break
        hull.append(r)
    return hull


def _push(heap: list[tuple[float, int, int]], i: int, step: int, hull: list[int], costs: list[Cost]) -> None:
    if step + 1 >= len(hull):
        return
    a, b = costs[hull[step]], costs[hull[step + 1]]
    gain = (a.calls - b.calls) / max(b.exceed - a.exceed, 1e-12)
    heapq.heappush(heap, (-gain, i, step))


class Planner:
    """Per-type schedules for the adaptive strategy, kept in step with the duration models."""

    def __init__(
        self,
        models: DurationModels,
        settings: AdaptiveSettings,
        policy: PollingPolicy,
        *,
        objective: Objective = "exceed",
        pooled: bool = True,
        headroom: float = HEADROOM,
        lag_weight: float = LAG_WEIGHT,
    ) -> None:
        self.models = models
        self.settings = settings
        self.policy = policy
        self.objective = objective
        self.pooled = pooled
        self.headroom = headroom
        self.lag_weight = lag_weight
        self._plans: dict[TypeKey, _TypePlan] = {}
        self._dirty: set[TypeKey] = set()
        self.recomputed = 0  # frontiers traced (a cost the docs quote)

    def observe(self, key: TypeKey, duration_s: float, finished_at: float) -> None:
        """Learn a finished job; marks the type for recomputation if its model moved enough."""
        model = self.models.observe(key, duration_s, finished_at)
        self.note_changed(key, model)

    def note_changed(self, key: TypeKey, model: TypeModel) -> None:
        """Check a model that changed (a finish, or a merge from the store) against its cached plan."""
        if model.samples < self.settings.min_samples:
            return
        plan = self._plans.get(key)
        if plan is None:
            self._dirty.add(key)
            return
        fresh = model.observed - plan.observed
        if fresh >= max(self.settings.min_samples, RECOMPUTE_SHARE * plan.samples):
            self._dirty.add(key)
        elif fresh % QUANTILE_CHECK_EVERY == 0 and fresh > 0:
            now = _levels(model)
            if any(
                abs(a - b) > QUANTILE_MOVE * max(b, 1e-9) for a, b in zip(now, plan.quantiles, strict=True)
            ):
                self._dirty.add(key)

    @property
    def dirty(self) -> bool:
        """True if some type's schedule waits for `refresh`."""
        return bool(self._dirty)

    def schedule(self, key: TypeKey) -> Schedule | None:
        """The type's cached schedule; None means the backoff curve (too few finishes, or none yet)."""
        plan = self._plans.get(key)
        return plan.schedule if plan is not None else None

    def delay(self, key: TypeKey | None, age_s: float | None, streak: int, rng: random.Random) -> float:
        """The jittered delay before the next poll of a job of type `key`, `age_s` after its createdAt."""
        schedule = self.schedule(key) if key is not None else None
        return next_poll_delay(schedule, age_s, streak, self.policy, self.settings, rng)

    def refresh(self, limit: int | None = None) -> int:
        """Retrace dirty types' frontiers, reallocate the lag budget, re-solve changed schedules.

        Returns how many frontiers were traced. Costs a few tens of milliseconds per dirty type, so the
        daemon calls it off the poll path, at most `limit` types at a time (the rest stay dirty for the
        next call); polls meanwhile use the schedules cached before.
        """
        problems: dict[TypeKey, ScheduleProblem] = {}
        keys = list(self._dirty)[:limit] if limit is not None else list(self._dirty)
        self._dirty.difference_update(keys)
        for key in keys:
            model = self.models.get(key)
            if model is None or model.samples < self.settings.min_samples:
                self._plans.pop(key, None)
                continue
            problem = self._problem(model)
            problems[key] = problem
            old = self._plans.get(key)
            costs = [problem.evaluate(problem.solve(*self._prices(p))) for p in PRICES]
            self._plans[key] = _TypePlan(
                model.observed, model.samples, _levels(model), costs, old.rung if old else -1, None
            )
            self.recomputed += 1
        for key in [k for k in self._plans if self.models.get(k) is None]:
            del self._plans[key]  # dropped to stay within max_types
        traced = len(problems)
        if not traced:
            return 0
        for key, rung in self._allocation().items():
            plan = self._plans[key]
            if plan.rung == rung and plan.schedule is not None and key not in problems:
                continue
            if key not in problems:
                model = self.models.get(key)
                assert model is not None  # plans of dropped models were removed above
                problems[key] = self._problem(model)
            plan.rung = rung
            plan.schedule = problems[key].solve(*self._prices(PRICES[rung]))
        return traced

    def plan_costs(self) -> dict[TypeKey, Cost]:
        """Each planned type's expected cost per job at its allocated price (what the planner believes)."""
        return {k: p.costs[p.rung] for k, p in self._plans.items() if p.rung >= 0}

    def _prices(self, price: float) -> tuple[float, float]:
        target = self.settings.lag_target_s
        if self.objective == "lag":
            return 0.0, price / target
        return price, self.lag_weight / target

    def _problem(self, model: TypeModel) -> ScheduleProblem:
        ages, probs = model.cdf()
        dist, top = distribution_of(ages, probs, model.samples)
        return ScheduleProblem(dist, top, self.settings.lag_target_s, self.settings, self.policy)

    def _allocation(self) -> dict[TypeKey, int]:
        now = max((m.last_finished_at for _, m in self.models), default=0.0)
        weights = {k: m.rate_at_time(now) for k, m in self.models}
        total = sum(weights.values()) or 1.0
        keys = list(self._plans)
        share = P95_SHARE * self.headroom
        if not self.pooled:  # every type held to the target on its own
            return {k: _cheapest_within(self._plans[k].costs, share) for k in keys}
        unmodelled = sum(w for k, w in weights.items() if k not in self._plans) / total
        budget = share - unmodelled * UNMODELLED_EXCEED
        types = [(weights[k] / total, self._plans[k].costs) for k in keys]
        return dict(zip(keys, allocate(types, budget), strict=True))

    def type_rows(self) -> list[dict[str, object]]:
        """What `GET /v1/job-types` lists: workspace, name, samples, p50_s, p90_s, p99_s, per type."""
        return [
            {
                "workspace": key[0],
                "name": key[1],
                "samples": model.samples,
                "p50_s": model.quantile(0.5),
                "p90_s": model.quantile(0.9),
                "p99_s": model.quantile(0.99),
            }
            for key, model in self.models
        ]


def _cheapest_within(costs: list[Cost], share: float) -> int:
    fits = [r for r, c in enumerate(costs) if c.exceed <= share]
    if not fits:
        return len(costs) - 1
    return min(fits, key=lambda r: costs[r].calls)


def _levels(model: TypeModel) -> tuple[float, ...]:
    return tuple(model.quantile(q) or 0.0 for q in _CHECK_LEVELS)
