"""Below saturation the scheduler batches its claims by time (`claim_window_s`): one claim per window for
what fell due in it, instead of a claim (and two loop rounds) per poll. The real `Scheduler` in its
forever loop on a `ManualClock`, with the fake upstream of test_scheduler.py at the fetch seam."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from tests.unit.test_scheduler import JOBS, POLICY, Upstream
from watcher.devtools.clock import ManualClock
from watcher.metrics import Metrics
from watcher.models import Registration, Source, Watch
from watcher.polling.buckets import Buckets
from watcher.polling.scheduler import CLAIM_WINDOW_S, Scheduler
from watcher.store.memory import MemoryStore

STEP_S = 0.001  # the clock moves a millisecond at a time
SPREAD_S = 0.002  # one watch falls due every 2 ms: 500 polls/s
COUNT = 40


class CountingStore(MemoryStore):
    """Counts the claims that found something."""

    claims = 0

    async def claim_due(self, now: float, limit: int, lease_s: float) -> list[Watch]:
        got = await super().claim_due(now, limit, lease_s)
        self.claims += bool(got)
        return got


async def _run(window_s: float) -> tuple[int, int, float]:
    """(claims that found work, polls made, the latest a poll started after its due time) for COUNT watches
    falling due one every SPREAD_S while the clock moves STEP_S at a time."""
    clock = ManualClock()
    store = CountingStore()
    upstream = Upstream()
    started: dict[str, float] = {}
    real_get = upstream.get_job

    async def get_job(job_id: str, workspace: str):  # type: ignore[no-untyped-def]
        started[job_id] = clock.now()
        return await real_get(job_id, workspace)

    upstream.get_job = get_job  # type: ignore[method-assign]
    t0 = clock.now()
    jobs: Sequence[str] = [*JOBS, *(f"00000000-0000-4000-9000-{n:012d}" for n in range(COUNT - len(JOBS)))]
    for i, job in enumerate(jobs):
        await store.register([Registration(job, "acme", Source.API)], t0 + 0.0005 + i * SPREAD_S)
    scheduler = Scheduler(
        store, upstream, POLICY, Buckets(clock, 1e6),
        Metrics(CollectorRegistry(), default_collectors=False), clock, random.Random(1),
        lambda _t, _w: (), max_concurrency=64, claim_window_s=window_s,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    for _ in range(round((COUNT * SPREAD_S + 4 * CLAIM_WINDOW_S) / STEP_S)):
        await clock.advance(STEP_S)
        for _ in range(20):
            await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(task, 10)
    due = {job: t0 + 0.0005 + i * SPREAD_S for i, job in enumerate(jobs)}
    late = max(started[j] - due[j] for j in started)
    return store.claims, upstream.total, late


async def test_claims_are_batched_by_time_below_saturation() -> None:
    """At 500 polls/s a 20 ms window claims about ten watches at a time; without it, about one."""
    claims, polls, late = await _run(CLAIM_WINDOW_S)
    assert polls == COUNT  # every watch polled once
    assert claims <= COUNT * SPREAD_S / CLAIM_WINDOW_S + 3
    assert late <= CLAIM_WINDOW_S + 2 * STEP_S  # no poll starts much later than a window after it was due
    unbatched, polls, _ = await _run(0.0)
    assert polls == COUNT
    assert unbatched >= COUNT / 2 > claims


@pytest.mark.parametrize("window_s", [0.0, CLAIM_WINDOW_S])
async def test_a_wake_still_claims_at_once(window_s: float) -> None:
    """A registration's wake() cuts the window short: the new watch is polled without waiting for it."""
    clock = ManualClock()
    store = MemoryStore()
    upstream = Upstream()
    scheduler = Scheduler(
        store, upstream, POLICY, Buckets(clock, 1e6),
        Metrics(CollectorRegistry(), default_collectors=False), clock, random.Random(1),
        lambda _t, _w: (), max_concurrency=4, claim_window_s=window_s,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    for _ in range(50):
        await asyncio.sleep(0)
    await store.register([Registration(JOBS[0], "acme", Source.API)], clock.now())
    scheduler.wake()
    for _ in range(50):
        await asyncio.sleep(0)
        if upstream.total:
            break
    assert upstream.total == 1  # the clock never moved
    stop.set()
    await asyncio.wait_for(task, 10)
