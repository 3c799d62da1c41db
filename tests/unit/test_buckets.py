"""Tests of the nested rate limits (`watcher.polling.buckets`): a bucket per workspace inside the upstream's,
driven by a manual clock; and the scheduler in burst mode with one workspace throttled.

Rates are powers of two so that slot times are exact in binary floating point.
"""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from prometheus_client import CollectorRegistry

from watcher.devtools.clock import ManualClock
from watcher.metrics import Metrics
from watcher.models import PollOutcome, PollResult, Registration, Source
from watcher.polling.buckets import STALE_RESERVATION_S, Buckets
from watcher.polling.policy import PollingPolicy
from watcher.polling.scheduler import Scheduler
from watcher.store.memory import MemoryStore

IDS = (f"job-{n}" for n in itertools.count())


def metrics() -> Metrics:
    return Metrics(CollectorRegistry(), default_collectors=False)


def gauge(m: Metrics, workspace: str) -> float | None:
    return m.registry.get_sample_value("watcher_upstream_throttled", {"workspace": workspace})


class TestNested:
    """A poll needs a token of its workspace's bucket and one of the upstream's."""

    def test_a_workspace_rate_below_the_upstream_s_limits_only_that_workspace(self) -> None:
        """`slow` (2/s, a burst of 2) runs out of tokens; `fast` and the upstream (16/s) still have some."""
        clock = ManualClock()
        buckets = Buckets(clock, 16.0, {"slow": 2.0, "fast": None})
        assert buckets.take("slow", next(IDS)) is None
        assert buckets.take("slow", next(IDS)) is None
        back = buckets.take("slow", next(IDS))
        assert back is not None and back == clock.monotonic() + 0.5
        for _ in range(8):
            assert buckets.take("fast", next(IDS)) is None
            assert buckets.upstream.try_acquire()

    def test_the_upstream_s_bucket_binds_every_workspace(self) -> None:
        """Workspace tokens to spare, but the upstream's bucket (4/s, a burst of 4) is empty: nobody goes."""
        clock = ManualClock()
        buckets = Buckets(clock, 4.0, {"a": 64.0, "b": 64.0})
        taken = 0
        for slug in ("a", "b", "a", "b", "a", "b"):
            assert buckets.take(slug, next(IDS)) is None
            taken += buckets.upstream.try_acquire()
        assert taken == 4

    def test_a_workspace_that_is_not_configured_gets_the_upstream_s_rate(self) -> None:
        clock = ManualClock()
        buckets = Buckets(clock, 8.0, {"a": None})
        assert buckets.workspace("gone").configured_rate == 8.0
        assert buckets.workspace("a").configured_rate == 8.0


class TestThrottling:
    """A 429 slows its workspace; only a majority of throttled workspaces slows the upstream."""

    def test_a_429_slows_only_its_workspace(self) -> None:
        clock = ManualClock()
        m = metrics()
        buckets = Buckets(clock, 16.0, {"a": None, "b": None}, throttled_gauge=m.upstream_throttled)
        assert (gauge(m, "a"), gauge(m, "b")) == (0.0, 0.0)
        buckets.penalize("a", 2.0)
        back = buckets.take("a", next(IDS))
        assert back is not None and back >= clock.monotonic() + 2.0
        assert buckets.take("b", next(IDS)) is None
        assert buckets.upstream.try_acquire()
        assert not buckets.upstream.throttled
        assert buckets.throttled == {"a"}
        assert (gauge(m, "a"), gauge(m, "b")) == (1.0, 0.0)

    def test_a_429_without_retry_after_halves_only_its_workspace_s_rate(self) -> None:
        clock = ManualClock()
        buckets = Buckets(clock, 16.0, {"a": None, "b": None})
        buckets.penalize("a", None)
        assert buckets.workspace("a").current_rate == 8.0
        assert buckets.workspace("b").current_rate == 16.0
        assert buckets.upstream.current_rate == 16.0

    def test_a_majority_of_throttled_workspaces_slows_the_upstream(self) -> None:
        """Three workspaces: one throttled is its own quota; two of three is the upstream's limit."""
        clock = ManualClock()
        buckets = Buckets(clock, 16.0, {"a": None, "b": None, "c": None})
        buckets.penalize("a", 1.0)
        assert buckets.upstream.current_rate == 16.0
        buckets.penalize("b", 1.0)
        assert buckets.upstream.current_rate == 8.0
        assert not buckets.upstream.try_acquire()  # its Retry-After holds every poll
        assert buckets.take("c", next(IDS)) is None  # c's own bucket is not throttled

    def test_with_one_workspace_its_429_slows_the_upstream(self) -> None:
        """One workspace is the whole upstream: the behaviour of the single shared bucket is unchanged."""
        clock = ManualClock()
        buckets = Buckets(clock, 16.0, {"only": None})
        buckets.penalize("only", 1.0)
        assert buckets.upstream.throttled
        assert not buckets.upstream.try_acquire()

    async def test_successful_polls_recover_the_workspace_and_clear_the_gauge(self) -> None:
        clock = ManualClock()
        m = metrics()
        buckets = Buckets(clock, 16.0, {"a": None, "b": None}, throttled_gauge=m.upstream_throttled)
        buckets.penalize("a", 1.0)
        buckets.reward("b")
        assert buckets.throttled == {"a"}
        for _ in range(40):  # the default recovery restores a halved rate within 5 s of successes
            await clock.advance(0.25)
            buckets.reward("a")
        assert buckets.throttled == frozenset()
        assert buckets.workspace("a").current_rate == 16.0
        assert gauge(m, "a") == 0.0

    def test_polls_sent_away_come_back_one_interval_apart(self) -> None:
        """After a 429 with Retry-After 1 s, the deferred polls of the workspace are queued after the hold at
        its halved rate (8/s), not all at the end of the hold."""
        clock = ManualClock()
        buckets = Buckets(clock, 16.0, {"a": None, "b": None})
        buckets.penalize("a", 1.0)
        backs = [buckets.take("a", next(IDS)) for _ in range(5)]
        assert all(b is not None for b in backs)
        times = [b for b in backs if b is not None]
        assert times[0] >= clock.monotonic() + 1.0
        assert [t2 - t1 for t1, t2 in itertools.pairwise(times)] == [0.125] * 4


class TestReservations:
    """A postponed poll's token is reserved: it keeps its place in line."""

    async def test_a_watch_that_comes_back_uses_its_reserved_token(self) -> None:
        """`a` at 2/s, burst used up: `late` reserves the slot 0.5 s ahead; coming back early it is told the
        same slot; at the slot it goes, and a newcomer then is queued behind it, not before."""
        clock = ManualClock()
        buckets = Buckets(clock, 64.0, {"a": 2.0})
        assert buckets.take("a", "x") is None and buckets.take("a", "y") is None
        slot = buckets.take("a", "late")
        assert slot == clock.monotonic() + 0.5
        await clock.advance(0.25)
        assert buckets.take("a", "late") == slot
        await clock.advance(0.25)
        newcomer = buckets.take("a", "new")
        assert buckets.take("a", "late") is None
        assert newcomer == slot + 0.5

    async def test_a_hold_over_a_reservation_makes_it_reserve_again(self) -> None:
        """A 429 after the reservation, with Retry-After 5 s: the watch coming back inside the hold does not
        poll; it gets a slot after the hold."""
        clock = ManualClock()
        buckets = Buckets(clock, 64.0, {"a": 2.0, "b": None})
        buckets.take("a", "x")
        buckets.take("a", "y")
        slot = buckets.take("a", "late")
        assert slot is not None
        buckets.penalize("a", 5.0)
        await clock.advance(slot - clock.monotonic())
        again = buckets.take("a", "late")
        assert again is not None and again >= slot + 5.0 - 0.5

    async def test_stale_reservations_are_forgotten(self) -> None:
        """Reservations never used (deleted watches) do not pile up."""
        clock = ManualClock()
        buckets = Buckets(clock, 64.0, {"a": 1.0})
        for n in range(50):
            buckets.take("a", f"gone-{n}")
        await clock.advance(50 + STALE_RESERVATION_S + 1)
        buckets.take("a", "x")
        buckets.take("a", "y")
        assert buckets.reservations <= 2


POLICY = PollingPolicy(
    initial_interval_s=1.0,
    multiplier=1.0,
    max_interval_s=1.0,
    jitter=0.0,
    max_watch_s=10_000.0,
    not_found_limit=3,
    error_backoff_max_s=4.0,
)


class Upstream:
    """The fetch seam: workspace `a` answers 429 with Retry-After while `limited`; everyone else 200."""

    def __init__(self) -> None:
        self.limited = True
        self.polls: dict[str, int] = {"a": 0, "b": 0}

    async def get_job(self, job_id: str, workspace: str) -> PollResult:
        self.polls[workspace] += 1
        if workspace == "a" and self.limited:
            return PollResult(PollOutcome.RATE_LIMITED, status_code=429, retry_after_s=30.0)
        body = {"id": job_id, "status": "active", "updatedAt": "2023-11-14T22:13:20.000Z"}
        return PollResult(PollOutcome.OK, body=body, status_code=200)


@pytest.mark.parametrize("workers", [1, 4])
async def test_a_throttled_workspace_does_not_hold_up_the_other(workers: int) -> None:
    """Workspace a answers 429 (Retry-After 30 s): its polls are deferred, never awaited, so each burst still
    polls all of b's watches, even with a single worker; a is polled again only once its hold is over.

    With a manual clock that only the test moves, a worker waiting for a's bucket would never wake up:
    `wait_for` would fail instead of the burst returning.
    """
    clock = ManualClock()
    store = MemoryStore()
    upstream = Upstream()
    m = metrics()
    buckets = Buckets(clock, 64.0, {"a": None, "b": None}, throttled_gauge=m.upstream_throttled)
    scheduler = Scheduler(
        store, upstream, POLICY, buckets, m, clock, random.Random(1), lambda _t, _w: (),
        max_concurrency=workers,
    )  # fmt: skip
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(16)]
    jobs = {"a": ids[:8], "b": ids[8:]}
    regs = [Registration(j, ws, Source.API) for ws, ids in jobs.items() for j in ids]
    await store.register(regs, clock.now())

    async def burst() -> int:
        return await asyncio.wait_for(scheduler.run_until_idle(), 5.0)

    await burst()
    assert upstream.polls["b"] == 8
    assert 1 <= upstream.polls["a"] <= workers  # polls already started when the first 429 came back
    assert buckets.throttled == {"a"}
    assert gauge(m, "a") == 1.0
    first_a = upstream.polls["a"]
    held = [w for w in [await store.get_watch(j) for j in jobs["a"]] if w is not None and w.polls == 0]
    assert len(held) == 8 - first_a  # sent away unpolled: nothing counted, due after the Retry-After
    assert all(w.next_poll_at >= clock.now() + 30.0 for w in held)
    for second in range(1, 11):  # ten more seconds: b on its 1 s interval, a held
        await clock.advance(1.0)
        await burst()
        assert upstream.polls["b"] == 8 * (second + 1)
    assert upstream.polls["a"] == first_a
    assert scheduler.polls_waiting() == 0
    upstream.limited = False
    await clock.advance(30.0)
    for _ in range(10):
        await burst()
        await clock.advance(1.0)
    assert upstream.polls["a"] >= first_a + 8  # every a watch polled again after the hold
    for job in jobs["a"]:
        watch = await store.get_watch(job)
        assert watch is not None and watch.status == "active"


async def test_a_workspace_s_own_rate_paces_its_polls() -> None:
    """Workspace `a` limited to 2 polls/s (a burst of 2) with 8 watches due every second: over 8 s it gets
    about 2/s, its postponed watches come back one by one and each is polled; `b` is not limited."""
    clock = ManualClock()
    store = MemoryStore()
    upstream = Upstream()
    upstream.limited = False
    buckets = Buckets(clock, 64.0, {"a": 2.0, "b": None})
    scheduler = Scheduler(
        store, upstream, POLICY, buckets, metrics(), clock, random.Random(1), lambda _t, _w: (),
        max_concurrency=4,
    )  # fmt: skip
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(16)]
    regs = [Registration(j, "a" if n < 8 else "b", Source.API) for n, j in enumerate(ids)]
    await store.register(regs, clock.now())
    for _ in range(32):
        await asyncio.wait_for(scheduler.run_until_idle(), 5.0)
        await clock.advance(0.25)
    assert 2 * 8 - 2 <= upstream.polls["a"] <= 2 * 8 + 2  # the rate, plus or minus the burst
    assert upstream.polls["b"] >= 8 * 7  # its 1 s interval, for 8 s
    for job in ids[:8]:
        watch = await store.get_watch(job)
        assert watch is not None and watch.polls >= 1
