"""When to poll a job of a learnt type next: the optimal inspection schedule over its duration distribution.

The classic problem (Barlow, Hunter & Proschan; Keller 1974): a job finishes at an unknown age D with a
known distribution; each poll costs one call; a finish is seen at the first poll after it. We minimise,
per job, expected calls + nu · P(lag > T) + mu · E[lag] by dynamic programming over a grid of ages, where
T is the pooled lag target. The exceedance term is what a p95 target asks for: with it alone the best
schedule covers the ages where finishes are dense with gaps of about T (any shorter gap buys nothing) and
skips the rest; the small lag term mu breaks ties towards earlier polls and keeps skipped regions bounded.
`nu` is the type's price of one late detection, set by the planner so that the pooled p95 meets T.

The programme yields a policy for every grid age, not just one chain of polls: a watch registered late,
or a poll the jitter moved, continues from the nearest grid age (a bisect), which keeps each poll O(log n).
Past the top of the model the backoff curve of SPEC §5 takes over, so a heavy tail costs no storm.
"""

from __future__ import annotations

import itertools
import math
import random
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from watcher.polling.policy import PollingPolicy, poll_delay

# The schedule covers the model up to this quantile (lower while few jobs finished: 1 - 1/samples);
# beyond it the backoff curve polls, as nothing is known there.
TOP_QUANTILE = 0.999
# The CDF the programme sees is resampled at quantile steps of at least this many finishes (and of at
# least MIN_SEGMENT), so sampling noise in a sparse tail does not read as ages where nothing finishes.
SEGMENT_SAMPLES = 20
MIN_SEGMENT = 0.005
# Below this relative spread between the shortest and the median job, no mass is assumed below the shortest.
PAD_MIN_SPREAD = 0.05
# Grid ages are at most T / GRID_PER_TARGET apart where finishes happen, so gaps near T are represented
# to within a quarter of it; MAX_GRID bounds the work for a type spread over many hours.
GRID_PER_TARGET = 4
MAX_GRID = 480
# Quantiles added to the grid whatever its step: every 1/SHAPE_POINTS of the finishes.
SHAPE_POINTS = 20
# Gaps up to NEAR_GAPS x T are all candidates; longer ones (skipping a sparse region) grow geometrically.
NEAR_GAPS = 2.0
MAX_NEAR = 32  # near candidates per grid age at most (evenly spread when the grid is finer)
FAR_GROWTH = 1.25
# Jitter is averaged over this many evenly spaced factors when a gap's lateness is priced.
JITTER_NODES = 4


@dataclass(frozen=True, slots=True)
class AdaptiveSettings:
    """The `[polling] adaptive_*` settings (SPEC §12); field names drop the `adaptive_` prefix."""

    lag_target_s: float = 60.0  # pooled p95 detection lag over all finished jobs
    min_samples: int = 20  # finished jobs before a type leaves the backoff curve
    min_interval_s: float = 1.0
    max_interval_s: float = 3600.0
    max_types: int = 10_000
    window: int = 1000  # finished jobs per window; the newest two are merged
    slow_quantile: float = 0.99  # `job.slow` beyond this quantile of the type's durations


class Distribution:
    """A piecewise-linear CDF of durations: F rises linearly between the given (age, probability) points."""

    __slots__ = ("_ages", "_means", "_probs")

    def __init__(self, ages: list[float], probs: list[float]) -> None:
        if not ages or len(ages) != len(probs):
            raise ValueError("a distribution needs as many probabilities as ages, at least one")
        self._ages = ages
        self._probs = probs
        # Partial means M(x) = ∫_0^x t dF at each point, for the expected lag of a gap.
        means = [ages[0] * probs[0]]
        for i in range(1, len(ages)):
            means.append(means[-1] + (probs[i] - probs[i - 1]) * (ages[i] + ages[i - 1]) / 2.0)
        self._means = means

    @property
    def first(self) -> float:
        """The youngest age with any finishes."""
        i = bisect_right(self._probs, 0.0)
        return self._ages[max(0, i - 1)]

    def cdf(self, age: float) -> float:
        """P(duration ≤ age)."""
        ages, probs = self._ages, self._probs
        i = bisect_right(ages, age)
        if i == 0:
            return 0.0
        if i == len(ages):
            return probs[-1]
        a0, a1 = ages[i - 1], ages[i]
        p0 = probs[i - 1]
        return p0 + (probs[i] - p0) * (age - a0) / (a1 - a0)

    def partial_mean(self, age: float) -> float:
        """∫_0^age t dF(t)."""
        ages, probs = self._ages, self._probs
        i = bisect_right(ages, age)
        if i == 0:
            return 0.0
        if i == len(ages):
            return self._means[-1]
        a0 = ages[i - 1]
        p = self.cdf(age)
        return self._means[i - 1] + (p - probs[i - 1]) * (a0 + age) / 2.0

    def quantile(self, q: float) -> float:
        """The smallest age by which a fraction `q` finished (interpolated)."""
        ages, probs = self._ages, self._probs
        i = bisect_left(probs, q)
        if i == 0:
            return ages[0]
        if i >= len(ages):
            return ages[-1]
        p0, p1 = probs[i - 1], probs[i]
        frac = 0.0 if p1 <= p0 else (q - p0) / (p1 - p0)
        return ages[i - 1] + frac * (ages[i] - ages[i - 1])


class Schedule:
    """A type's polling policy: for each grid age, the age of the next poll; backoff beyond `top`."""

    __slots__ = ("ages", "next_ages", "top")

    def __init__(self, ages: list[float], next_ages: list[float]) -> None:
        self.ages = array("d", ages)
        self.next_ages = array("d", next_ages)
        self.top = ages[-1]

    def next_age(self, age: float) -> float | None:
        """The age at which to poll a job last seen running at `age`; None past the model (use backoff)."""
        ages = self.ages
        last = len(ages) - 1
        if age >= ages[last]:
            return None
        i = bisect_right(ages, age) - 1  # ages[i] <= age < ages[i + 1]
        if age - ages[i] > ages[i + 1] - age:
            i += 1  # the nearest grid age stands for this state
        if i == last:
            return None
        return self.next_ages[i]

    def chain(self, start: float = 0.0) -> list[float]:
        """The poll ages a job created at its registration meets, from `start` up to the top."""
        out = [start]
        age: float | None = start
        while age is not None and len(out) <= len(self.ages):
            age = self.next_age(age)
            if age is not None:
                out.append(age)
        return out


@dataclass(frozen=True, slots=True)
class Cost:
    """Expected cost of one job under a schedule: calls, P(lag > T) and mean lag (seconds)."""

    calls: float
    exceed: float
    lag_s: float


class ScheduleProblem:
    """One type's inspection problem for one lag target: the grid and every candidate gap, priced once.

    `solve` then runs the dynamic programme for a given (nu, mu) in O(grid x candidates), cheap enough to
    trace a whole frontier of prices while the gaps' costs are shared.
    """

    def __init__(
        self,
        dist: Distribution,
        top: float,
        target_s: float,
        settings: AdaptiveSettings,
        policy: PollingPolicy,
    ) -> None:
        self.dist = dist
        self.target_s = target_s
        self.settings = settings
        self.policy = policy
        self.grid = _grid(dist, top, target_s, settings)
        grid = self.grid
        self.survival = [1.0 - dist.cdf(x) for x in grid]
        self._means = [dist.partial_mean(x) for x in grid]
        self._ends, self._diffs = _jitter_nodes(policy.jitter)
        # Gaps of backoff's max_interval_s or more share one jitter span, so the late ages (and F there)
        # of a gap depend on its end alone: priced once per grid age, not once per candidate gap.
        self._capped: dict[tuple[int, bool], list[tuple[float, float]]] = {}
        self.tail = _tail_cost(top, target_s, policy)
        cands: list[tuple[list[int], list[float], list[float]]] = []
        for j in range(len(grid) - 1):
            ks = _candidates(grid, j, target_s, settings.max_interval_s)
            exc = [self._exceed(j, k) for k in ks]
            lag = [self._lag(j, k) for k in ks]
            cands.append((ks, exc, lag))
        self._cands = cands

    def _exceed(self, j: int, k: int) -> float:
        """P(finish in this gap and seen more than T after it), the polls' jitter averaged over.

        Both ends of a gap move: each poll aims at a grid age and lands within its jitter span, so the
        gap's length varies by the difference of two jitters (only the end's for the first poll, which
        happens at registration).
        """
        grid, dist, target = self.grid, self.dist, self.target_s
        a, b = grid[j], grid[k]
        spread = jitter_span(b - a, self.policy)
        nodes = self._ends if j == 0 else self._diffs
        if b + spread * nodes[-1][0] - target <= a:
            return 0.0
        f_a = 1.0 - self.survival[j]
        total = 0.0
        if spread < self.policy.max_interval_s:
            for offset, weight in nodes:
                late = b + spread * offset - target
                if late > a:
                    total += weight * (dist.cdf(late) - f_a)
            return max(0.0, total)
        key = (k, j == 0)
        lates = self._capped.get(key)
        if lates is None:
            lates = []
            for offset, weight in nodes:
                late = b + spread * offset - target
                lates.append((late, weight * dist.cdf(late)))
            self._capped[key] = lates
        for (late, weighted), (_, weight) in zip(lates, nodes, strict=True):
            if late > a:
                total += weighted - weight * f_a
        return max(0.0, total)

    def _lag(self, j: int, k: int) -> float:
        """E[lag; finish in this gap] for a poll at the gap's end."""
        b = self.grid[k]
        return b * (self.survival[j] - self.survival[k]) - (self._means[k] - self._means[j])

    def solve(self, nu: float, mu: float) -> Schedule:
        """The schedule minimising calls + nu·P(lag > T) + mu·E[lag] from every grid age."""
        grid = self.grid
        n = len(grid)
        value = [0.0] * n
        nxt = [n - 1] * n
        for j in range(n - 2, -1, -1):
            ks, exc, lag = self._cands[j]
            best = math.inf
            arg = ks[-1]
            for i, k in enumerate(ks):
                c = nu * exc[i] + mu * lag[i] + value[k]
                if c < best:
                    best, arg = c, k
            value[j] = self.survival[j] + best
            nxt[j] = arg
        return Schedule(grid, [grid[k] for k in nxt])

    def evaluate(self, schedule: Schedule) -> Cost:
        """Expected cost of a job polled first at age 0 (registered as it is created)."""
        grid = self.grid
        calls, exceed, lag = 1.0, 0.0, 0.0
        ages = schedule.chain(0.0)
        for a, b in itertools.pairwise(ages):
            j, k = bisect_left(grid, a), bisect_left(grid, b)
            calls += self.survival[j]
            exceed += self._exceed(j, k)
            lag += self._lag(j, k)
        tail = self.survival[-1]
        return Cost(
            calls + tail * self.tail.calls, exceed + tail * self.tail.exceed, lag + tail * self.tail.lag_s
        )


def _grid(dist: Distribution, top: float, target_s: float, settings: AdaptiveSettings) -> list[float]:
    """Ages at which the programme may poll: 0, then where finishes happen, finer than T, up to `top`."""
    first = min(dist.first, top)
    step = max(settings.min_interval_s, target_s / GRID_PER_TARGET, (top - first) / MAX_GRID)
    points = {0.0, top}
    # Never a gap the programme cannot take: at most max_interval apart before the first finish, too.
    reach = settings.max_interval_s
    age = first
    while age > reach:
        age -= reach
        points.add(age)
    count = int((top - first) / step)
    points.update(first + i * step for i in range(count + 1))
    # The distribution's own shape, so a narrow type is not left with a grid coarser than its spread.
    points.update(dist.quantile(q / SHAPE_POINTS) for q in range(1, SHAPE_POINTS))
    grid: list[float] = []
    for x in sorted(points):
        if x > top:
            break
        if not grid or x - grid[-1] >= settings.min_interval_s:
            grid.append(x)
    if grid[-1] != top:
        if len(grid) > 1 and top - grid[-1] < settings.min_interval_s:
            grid[-1] = top
        else:
            grid.append(top)
    return grid


def _candidates(grid: list[float], j: int, target_s: float, max_gap: float) -> list[int]:
    """The grid indices a poll at grid[j] may be followed by: all near ones, then geometrically sparser."""
    a = grid[j]
    n = len(grid)
    near_end = max(bisect_right(grid, min(a + NEAR_GAPS * target_s, a + max_gap), j + 1), j + 2)
    stride = max(1, (near_end - j - 1) // MAX_NEAR)
    ks = list(range(j + 1, near_end, stride))
    reach = NEAR_GAPS * target_s
    limit = a + max_gap
    while True:
        reach *= FAR_GROWTH
        if a + reach > limit:
            break
        k = bisect_right(grid, a + reach) - 1
        if k > ks[-1]:
            ks.append(k)
        if k >= n - 1:
            break
    last = bisect_right(grid, limit) - 1
    if last > ks[-1]:
        ks.append(last)
    return ks


def _tail_cost(top: float, target_s: float, policy: PollingPolicy) -> Cost:
    """Rough cost of a job that outlives the model: backoff at its cap for about half the top again."""
    gap = policy.max_interval_s
    nodes = [1.0 + policy.jitter * (2.0 * (q + 0.5) / JITTER_NODES - 1.0) for q in range(JITTER_NODES)]
    exceed = sum(max(0.0, 1.0 - target_s / (gap * u)) for u in nodes) / len(nodes)
    return Cost(1.0 + 0.5 * top / gap, exceed, gap / 2.0)


def _jitter_nodes(jitter: float) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Quadrature (offset, weight) for one poll's jitter and for the difference of two, offsets ascending."""
    ends = [jitter * (2.0 * (q + 0.5) / JITTER_NODES - 1.0) for q in range(JITTER_NODES)]
    diffs: dict[float, float] = {}
    for e1 in ends:
        for e2 in ends:
            key = round(e2 - e1, 12)
            diffs[key] = diffs.get(key, 0.0) + 1.0 / JITTER_NODES**2
    return [(e, 1.0 / JITTER_NODES) for e in ends], sorted(diffs.items())


def jitter_span(gap: float, policy: PollingPolicy) -> float:
    """How far a gap's jitter may move its poll, each way, per unit of `jitter`.

    SPEC §5 scales the delay by U[1 - jitter, 1 + jitter], and backoff's delays never exceed its
    `max_interval_s`; a schedule's long jump over ages where nothing finishes would otherwise land
    ± 20 % of an hour away from where finishes start. Spreading by at most what backoff spreads keeps
    polls of jobs created together apart just as well.
    """
    return min(gap, policy.max_interval_s)


def distribution_of(ages: list[float], probs: list[float], samples: int) -> tuple[Distribution, float]:
    """A type's smoothed distribution and the top age its schedule covers (lower while samples are few).

    The sketch's own CDF follows the sample closely, holes included: where a tail has one finish every
    few bins, the programme would plan long gaps across the empty bins that the next jobs then fall into.
    So the CDF is resampled at quantile levels that each hold at least SEGMENT_SAMPLES finishes.
    """
    raw = Distribution(ages, probs)
    top_q = min(TOP_QUANTILE, 1.0 - 1.0 / max(2, samples))
    step = max(MIN_SEGMENT, SEGMENT_SAMPLES / max(1, samples))
    levels = [0.0]
    while levels[-1] + step < top_q:
        levels.append(levels[-1] + step)
    levels.append(top_q)
    points: list[float] = []
    cum: list[float] = []
    for q in levels:
        x = raw.quantile(q) if q > 0.0 else raw.first
        if not points:
            points.append(x)
            cum.append(raw.cdf(x))  # zero-length jobs are an atom at age 0: keep it
        elif x <= points[-1]:
            cum[-1] = max(cum[-1], q)  # an atom (many finishes in one bin): the CDF jumps there
        else:
            points.append(x)
            cum.append(max(cum[-1], q))
    return _pad_below(points, cum, raw.quantile(0.5), samples), points[-1]


def _pad_below(points: list[float], cum: list[float], median: float, samples: int) -> Distribution:
    """The shortest job seen is not the type's shortest: about 1/(samples + 1) of its jobs finish sooner.

    Without this, a schedule learnt from few jobs skips everything below the shortest one, and each job
    that is a little shorter is seen a whole skip late. That mass is spread below the first finish, down to
    the first finish mirrored about the median in log space; it fades as samples grow. A type whose jobs
    all take the same time (no spread below the median) gets none.
    """
    first = points[0]
    if first <= 0.0 or cum[0] > 0.0 or median <= first * (1.0 + PAD_MIN_SPREAD):
        return Distribution(points, cum)
    pad = 1.0 / (max(1, samples) + 1)
    lower = first * first / median
    return Distribution([lower, *points], [0.0, *(pad + (1.0 - pad) * c for c in cum)])


def next_poll_delay(
    schedule: Schedule | None,
    age_s: float | None,
    streak: int,
    policy: PollingPolicy,
    settings: AdaptiveSettings,
    rng: random.Random,
) -> float:
    """The delay before the next poll of a job `age_s` old (now - createdAt), jittered as in SPEC §5.

    Without a schedule (a type with too few finishes), without a known age, or past the schedule's top,
    the backoff curve decides (`streak` as there). Otherwise the gap to the schedule's next age, jittered
    (see `jitter_span`) and kept within [min_interval_s, max_interval_s].
    """
    if schedule is None or age_s is None:
        return poll_delay(streak, policy, rng)
    age = max(0.0, age_s)
    target = schedule.next_age(age)
    if target is None:
        return poll_delay(streak, policy, rng)
    gap = target - age
    if policy.jitter > 0.0:
        gap += jitter_span(gap, policy) * rng.uniform(-policy.jitter, policy.jitter)
    return min(settings.max_interval_s, max(settings.min_interval_s, gap))
