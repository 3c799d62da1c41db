"""Housekeeping on a `ManualClock`: its pause between rounds is a constructor parameter, so a test moves the
clock instead of sleeping through the daemon's one-second floor."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from tests.support.eventually import eventually
from watcher.daemon.housekeeping import MAX_STALE_S, MIN_PAUSE_S, ROUND_BUDGET, Housekeeping, pause_after
from watcher.devtools.clock import ManualClock
from watcher.health import StoreHealth
from watcher.metrics import Metrics
from watcher.store.base import StoreCounts
from watcher.store.memory import MemoryStore


class CountingStore(MemoryStore):
    """Counts the aggregate queries, one per housekeeping round."""

    rounds = 0
    purged_before: list[float]

    async def counts(self, on_snapshot: Callable[[], None] | None = None) -> StoreCounts:
        self.rounds += 1
        return await super().counts(on_snapshot)

    async def purge_finished(self, before: float) -> int:
        self.purged_before.append(before)
        return await super().purge_finished(before)


async def test_rounds_follow_the_injected_clock_and_pause() -> None:
    """A round at start, the next one only once the clock has moved `min_pause_s`; purges every
    `purge_interval_s` of that clock, with the retention behind it."""
    clock = ManualClock()
    store = CountingStore()
    store.purged_before = []
    metrics = Metrics(CollectorRegistry(), webhooks=(), default_collectors=False)
    housekeeping = Housekeeping(
        store,
        metrics,
        StoreHealth(clock),
        clock,
        random.Random(1),
        purge_interval_s=30.0,
        retention_s=100.0,
        min_pause_s=10.0,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(housekeeping.run(stop))
    try:
        await eventually(lambda: clock.sleepers == 1, 10, "the first round, then its pause")
        assert store.rounds == 1
        start = clock.now()
        await clock.advance(9.0)
        assert (store.rounds, clock.sleepers) == (1, 1)  # still the first pause
        await clock.advance(1.0)
        for n in (2, 3, 4, 5):
            await eventually(lambda: store.rounds == n and clock.sleepers == 1, 10, f"round {n}")  # noqa: B023
            await clock.advance(10.0)
        assert store.purged_before == [start - 100.0, start + 30.0 - 100.0]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_the_default_pause_is_unchanged() -> None:
    assert MIN_PAUSE_S == 1.0


def test_a_slow_recount_pauses_fifty_times_as_long_within_the_staleness_bound() -> None:
    """The recount's share of a core: ~2 % while the gauges stay fresher than MAX_STALE_S, ~10 % at worst."""
    assert pause_after(0.001) == MIN_PAUSE_S  # a small store: the floor
    assert pause_after(0.1) == pytest.approx(0.1 / ROUND_BUDGET)  # a million watches: 5 s, 2 %
    assert pause_after(1.0) == MAX_STALE_S  # slower than that: the gauges' staleness bound wins
    assert pause_after(10.0) == 100.0  # and past it, never more than a tenth of the time
    assert pause_after(0.001, min_pause_s=10.0) == 10.0
