"""Circuit breakers per endpoint (SPEC §13): a real DeliveryWorker over every store, a real receiver on
loopback that is down for a while, attempts counted where they arrive."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from tests.integration.test_delivery import SECRET, add_events
from tests.support.eventually import eventually
from tests.support.standard_webhooks import TestReceiver
from watcher.clock import SystemClock
from watcher.delivery.breaker import REFRESH_S, BreakerPolicy, Breakers, after_attempt, take_probe
from watcher.delivery.target import WebhookTarget
from watcher.delivery.webhook import SendResult, WebhookSender
from watcher.delivery.worker import DeliveryWorker
from watcher.metrics import Metrics
from watcher.models import BreakerState, DeadReason, DeliveryOutcome, DeliveryState, EndpointHealth
from watcher.store.base import Store

JOBS = [f"00000000-0000-4000-8000-{n:012d}" for n in range(4)]


@pytest.fixture
async def receiver() -> AsyncIterator[TestReceiver]:
    """A verifying receiver."""
    r = TestReceiver([SECRET])
    await r.start()
    yield r
    await r.stop()


def worker(store: Store, url: str, session: aiohttp.ClientSession, **target: Any) -> DeliveryWorker:
    """A worker with breakers, delivering `ops` to `url`."""
    t = WebhookTarget("ops", url, (SECRET,), frozenset({"job.failed"}), timeout_s=2.0, **target)
    metrics = Metrics(CollectorRegistry(), webhooks=("ops",))
    clock = SystemClock()
    breakers = Breakers(store, clock, metrics, probe_lease_s=5.0, webhooks=("ops",))
    return DeliveryWorker(
        store,
        WebhookSender(session, clock),
        {"ops": t},
        metrics,
        clock,
        random.Random(3),
        max_idle_s=0.05,
        lease_s=5.0,
        breakers=breakers,
    )


async def test_receiver_down_longer_than_all_retries_gets_everything(
    store: Store, receiver: TestReceiver
) -> None:
    """Down for far longer than max_attempts x retry_max_s: nothing dies, a handful of attempts arrive while
    it is down (first failures, then one probe per open period), everything arrives after, same ids."""
    assert receiver.url is not None
    receiver.set_status(503)
    events = [e for job in JOBS for e in await add_events(store, job, ["failed"])]
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        w = worker(
            store, receiver.url, session, max_attempts=3, retry_initial_s=0.05, retry_max_s=0.1,
            breaker_failures=2, breaker_open_s=0.3, breaker_open_max_s=0.6,
        )  # fmt: skip
        task = asyncio.create_task(w.run(stop))
        down_s = 3.0  # ten times max_attempts x retry_max_s
        await asyncio.sleep(down_s)
        while_down = sum(receiver.attempts.values())
        opened = [h for h in await store.endpoints() if h.endpoint == "ops"]
        receiver.set_status(None)
        await receiver.wait_for(len(events), within_s=10.0)
        await eventually(lambda: _count(store, DeliveryState.DELIVERED, len(events)), 5.0)
        stop.set()
        await asyncio.wait_for(task, 5.0)
    # The first failures (each delivery at most twice before the breaker opened), then one probe per period.
    probes_max = int(down_s / 0.3) + 1
    assert while_down <= 2 * len(events) + probes_max, receiver.attempts
    assert while_down >= 2
    assert await store.list_deliveries(state="dead") == []
    assert sorted(d.id for d in receiver.deliveries) == sorted(e.id for e in events)
    assert opened and opened[0].state in (BreakerState.OPEN, BreakerState.HALF_OPEN)
    (closed,) = [h for h in await store.endpoints() if h.endpoint == "ops"]
    assert (closed.state, closed.consecutive_failures) == (BreakerState.CLOSED, 0)


async def test_open_breaker_in_the_store_is_respected_by_a_new_worker(
    store: Store, receiver: TestReceiver
) -> None:
    """A breaker another replica (or the last run) opened holds this worker's deliveries until it ends."""
    assert receiver.url is not None
    now = time.time()
    assert await store.put_endpoint(EndpointHealth("ops", "ops", BreakerState.OPEN, 5, now + 1.0, 1.0, "x"))
    await add_events(store, JOBS[0], ["failed"])
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(worker(store, receiver.url, session).run(stop))
        await asyncio.sleep(0.5)
        assert receiver.attempts.total() == 0  # open: not even claimed
        await receiver.wait_for(1, 5.0)  # the probe, after the period
        assert time.time() - now >= 0.9
        stop.set()
        await asyncio.wait_for(task, 5.0)
    (h,) = await store.endpoints()
    assert h.state is BreakerState.CLOSED


async def test_two_workers_never_probe_at_once(store: Store, receiver: TestReceiver) -> None:
    """Two workers (replicas) on one store: once both have seen the breaker open (within REFRESH_S), never
    two requests at once while the endpoint is down, because only the compare-and-set winner probes."""
    assert receiver.url is not None
    receiver.set_status(503)
    for job in JOBS:
        await add_events(store, job, ["failed"])
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        keys: dict[str, Any] = {"breaker_failures": 1, "breaker_open_s": 0.1, "breaker_open_max_s": 0.1}
        a, b = worker(store, receiver.url, session, **keys), worker(store, receiver.url, session, **keys)
        tasks = [asyncio.create_task(w.run(stop)) for w in (a, b)]
        await eventually(lambda: _opened(store), 5.0)
        # Each worker reads the others' breakers at least once a second (REFRESH_S): after that, and once
        # the attempts sent while it looked closed are answered, only probes go out.
        await asyncio.sleep(REFRESH_S + 0.3)
        receiver.delay_s = 0.15  # from now on a probe is still out when the other worker looks
        receiver.max_in_progress = receiver.in_progress
        before = receiver.attempts.total()
        await asyncio.sleep(2.0)
        probes = receiver.attempts.total() - before
        stop.set()
        await asyncio.gather(*tasks)
    assert receiver.max_in_progress <= 1
    assert 3 <= probes <= 2.0 / 0.1 + 1  # probes kept going, one at a time


async def _opened(store: Store) -> bool:
    return any(h.state is not BreakerState.CLOSED for h in await store.endpoints())


async def test_old_deliveries_die_with_max_age(store: Store, receiver: TestReceiver) -> None:
    """An event older than max_delivery_age_s is dead (`max_age`) instead of sent."""
    assert receiver.url is not None
    await add_events(store, JOBS[0], ["failed"])
    await asyncio.sleep(0.3)
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(worker(store, receiver.url, session, max_delivery_age_s=0.2).run(stop))
        await eventually(lambda: _count(store, DeliveryState.DEAD, 1), 5.0)
        stop.set()
        await asyncio.wait_for(task, 5.0)
    (dead,) = await store.list_deliveries(state="dead")
    assert dead.last_error is not None and dead.last_error.startswith("max_age")
    assert receiver.attempts.total() == 0


async def _count(store: Store, state: DeliveryState, n: int) -> bool:
    return len(await store.list_deliveries(state=state.value)) == n


class TestRules:
    """The pure breaker rules."""

    P = BreakerPolicy(failures=3, open_s=10.0, open_max_s=25.0)

    @staticmethod
    def result(kind: DeliveryOutcome, reason: DeadReason | None = None) -> SendResult:
        """A send result of `kind`."""
        return SendResult(kind, 503 if kind is DeliveryOutcome.RETRY else None, None, "HTTP 503", 0.1, reason)

    def test_opens_after_consecutive_failures_and_doubles_while_probes_fail(self) -> None:
        """Three failures open it; a failed probe doubles the period up to the max; a success closes it."""
        h = EndpointHealth("ops", "ops")
        fail, ok = self.result(DeliveryOutcome.RETRY), self.result(DeliveryOutcome.SUCCESS)
        for _ in range(2):
            h = after_attempt(h, fail, False, self.P, 100.0)
        assert (h.state, h.consecutive_failures) == (BreakerState.CLOSED, 2)
        h = after_attempt(h, fail, False, self.P, 100.0)
        assert (h.state, h.open_until, h.open_s) == (BreakerState.OPEN, 110.0, 10.0)
        assert take_probe(h, 109.0, 5.0) is None
        probe = take_probe(h, 110.0, 5.0)
        assert probe is not None and (probe.state, probe.open_until) == (BreakerState.HALF_OPEN, 115.0)
        h = after_attempt(probe, fail, True, self.P, 111.0)
        assert (h.state, h.open_until, h.open_s) == (BreakerState.OPEN, 131.0, 20.0)
        h = after_attempt(h, fail, True, self.P, 131.0)
        assert h.open_s == 25.0
        h = after_attempt(h, ok, True, self.P, 160.0)
        assert (h.state, h.consecutive_failures, h.open_until) == (BreakerState.CLOSED, 0, None)

    def test_permanent_failures_do_not_count(self) -> None:
        """410 and blocked_address neither count nor reset; as a probe's answer, the endpoint is reachable."""
        h = EndpointHealth("ops", "ops", consecutive_failures=2)
        gone = self.result(DeliveryOutcome.DEAD, DeadReason.GONE)
        assert after_attempt(h, gone, False, self.P, 1.0) == h
        opened = EndpointHealth("ops", "ops", BreakerState.HALF_OPEN, 4, 5.0, 10.0)
        assert after_attempt(opened, gone, True, self.P, 1.0).state is BreakerState.CLOSED

    def test_an_expired_probe_lease_is_taken_over(self) -> None:
        """A probe whose worker died frees the endpoint for another probe once its lease ends."""
        half = EndpointHealth("ops", "ops", BreakerState.HALF_OPEN, 5, 50.0, 10.0)
        assert take_probe(half, 49.0, 5.0) is None
        taken = take_probe(half, 50.0, 5.0)
        assert taken is not None and taken.open_until == 55.0
