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
from watcher.models import Registration, SavedPoll, Source, Watch
from watcher.polling.buckets import Buckets
from watcher.polling.scheduler import CLAIM_WINDOW_S, QUIET_AFTER_S, QUIET_CLAIM_WINDOW_S, Scheduler
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


async def _run(
    window_s: float, *, seen: bool = False, quiet_for_s: float = 0.0, count: int = COUNT
) -> tuple[int, int, float]:
    """(claims that found work, polls made, the latest a poll started after its due time) for `count` watches
    falling due one every SPREAD_S while the clock moves STEP_S at a time.

    `seen`: every watch was already seen `active` (as after its first poll), so no poll finds a change;
    `quiet_for_s`: the scheduler runs that long with nothing due before the first watch falls due.
    """
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
    jobs: Sequence[str] = [*JOBS, *(f"00000000-0000-4000-9000-{n:012d}" for n in range(count - len(JOBS)))]
    first = t0 + quiet_for_s + 0.0005
    for i, job in enumerate(jobs):
        await store.register([Registration(job, "acme", Source.API)], first + i * SPREAD_S)
    if seen:
        watches = await store.claim_due(first + count * SPREAD_S, count, 60.0)
        for w in watches:
            w.status, w.polls, w.streak, w.last_polled_at = "active", 1, 1, t0
        await store.save_polls([SavedPoll(w) for w in watches])  # due times unchanged: still one every 2 ms
    scheduler = Scheduler(
        store, upstream, POLICY, Buckets(clock, 1e6),
        Metrics(CollectorRegistry(), default_collectors=False), clock, random.Random(1),
        lambda _t, _w: (), max_concurrency=64, claim_window_s=window_s,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    for _ in range(round((quiet_for_s + count * SPREAD_S + 4 * QUIET_CLAIM_WINDOW_S) / STEP_S)):
        await clock.advance(STEP_S)
        for _ in range(20):
            await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(task, 10)
    due = {job: first + i * SPREAD_S for i, job in enumerate(jobs)}
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


async def test_the_window_widens_while_polls_find_nothing_new() -> None:
    """Watches seen before, each poll finding them unchanged: once QUIET_AFTER_S has passed without a
    change, claims are QUIET_CLAIM_WINDOW_S apart (fewer claims, polls up to that late); polls that find
    changes (first observations) keep the narrow window."""
    count = 200  # due over 0.4 s: four wide windows, twenty narrow ones
    quiet_claims, polls, late = await _run(
        CLAIM_WINDOW_S, seen=True, quiet_for_s=QUIET_AFTER_S + 0.1, count=count
    )
    assert polls == count
    assert quiet_claims <= count * SPREAD_S / QUIET_CLAIM_WINDOW_S + 3
    assert late <= QUIET_CLAIM_WINDOW_S + 2 * STEP_S
    busy_claims, polls, late = await _run(CLAIM_WINDOW_S, count=count)
    assert polls == count
    assert late <= CLAIM_WINDOW_S + 2 * STEP_S  # first observations found changes: the narrow window
    assert busy_claims >= count * SPREAD_S / CLAIM_WINDOW_S / 2  # about 20
    assert 2 * quiet_claims < busy_claims  # about 6 (a saved batch may cut a window short)


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
