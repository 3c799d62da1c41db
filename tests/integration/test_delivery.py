"""DeliveryWorker end to end: a real store API, a real aiohttp client and a verifying receiver on loopback."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from tests.support.eventually import eventually
from tests.support.ports import free_port
from tests.support.standard_webhooks import TestReceiver
from watcher import __version__
from watcher.clock import SystemClock
from watcher.delivery.target import WebhookTarget
from watcher.delivery.webhook import WebhookSender
from watcher.delivery.worker import NOT_CONFIGURED, DeliveryWorker
from watcher.devtools.receiver import Receiver
from watcher.errors import StoreError
from watcher.events import transition_event
from watcher.metrics import Metrics
from watcher.models import (
    Delivery,
    DeliveryState,
    DeliveryUpdate,
    Event,
    NewEvent,
    Registration,
    SavedPoll,
    Source,
)
from watcher.store.memory import MemoryStore

SECRET = "whsec_" + base64.b64encode(b"integration-test-key-0001").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"integration-test-key-old!").decode()
JOB_A = "5135bfe3-b2c7-41f3-a44f-f4b58e7384df"
JOB_B = "0f6a2d1e-4c1b-4a7e-9a51-8f7f0d6b2c33"


async def add_events(
    store: MemoryStore, job_id: str, statuses: Sequence[str], webhooks: tuple[str, ...] = ("ops",)
) -> list[Event]:
    """Store one transition event per status through the store's real API, as the scheduler would."""
    now = time.time()
    await store.register([Registration(job_id, "acme", Source.API, labels={"team": "billing"})], now)
    events, previous = [], None
    for i, status in enumerate(statuses):
        [watch] = await store.claim_due(time.time(), 1, 60.0)
        now = time.time()
        body = {
            "id": job_id,
            "name": "customer.createBatch",
            "status": status,
            "error": None,
            "updatedAt": f"2026-04-01T10:18:{i:02d}.000Z",
        }
        if status == "failed":
            body["error"] = "row 17: invalid email"
        assert watch.job_id == job_id
        # Due again at once while statuses follow, then parked so the next job's claim gets its own watch.
        parked = i == len(statuses) - 1
        watch.status, watch.polls, watch.next_poll_at = status, watch.polls + 1, now + (3600 if parked else 0)
        event = transition_event(watch, body, previous, now)
        assert await store.save_polls([SavedPoll(watch, (NewEvent(event, webhooks),))]) == [True]
        events.append(event)
        previous = status
    return events


class CountingStore(MemoryStore):
    """Counts the worker's claims, and its look-ups of the next due time (made when a claim found less
    than it had room for): a test knows the worker went round, or went idle, without sleeping."""

    claims = 0
    lookups = 0

    async def claim_deliveries(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        self.claims += 1
        return await super().claim_deliveries(now, limit, lease_s)

    async def next_delivery_at(self) -> float | None:
        self.lookups += 1
        return await super().next_delivery_at()


@dataclass
class Harness:
    """A running DeliveryWorker with its store, receiver and metrics."""

    store: MemoryStore
    receiver: TestReceiver
    metrics: Metrics
    worker: DeliveryWorker
    target: WebhookTarget
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.worker.run(self.stop))

    async def finish(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 5.0)

    def count(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "watcher_webhook_deliveries_total", {"webhook": self.target.name, "outcome": outcome}
        )
        return value or 0.0

    async def in_state(self, state: DeliveryState) -> list[Delivery]:
        return await self.store.list_deliveries(state=state.value)


MakeHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def receiver() -> AsyncIterator[TestReceiver]:
    r = TestReceiver([SECRET])
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def make_harness(receiver: TestReceiver) -> AsyncIterator[MakeHarness]:
    """Build harnesses whose target points at `receiver`; everything opened is closed afterwards."""
    session = aiohttp.ClientSession()
    harnesses: list[Harness] = []

    async def make(
        store: MemoryStore | None = None, worker_kw: dict[str, Any] | None = None, **target_kw: Any
    ) -> Harness:
        target = WebhookTarget(
            name="ops",
            url=receiver.url,
            secrets=(SECRET,),
            events=frozenset({"job.failed"}),
            timeout_s=2.0,
            max_attempts=5,
            retry_initial_s=0.01,
            retry_max_s=0.05,
            headers={"x-api-key": "receiver-key-42"},
        )
        target = replace(target, **target_kw)
        store = store or MemoryStore()
        await store.open()
        metrics = Metrics(CollectorRegistry(), webhooks=("ops",))
        worker = DeliveryWorker(
            store,
            WebhookSender(session, SystemClock()),
            {"ops": target},
            metrics,
            SystemClock(),
            random.Random(1),
            **{"max_idle_s": 0.2, **(worker_kw or {})},
        )
        harness = Harness(store, receiver, metrics, worker, target)
        harnesses.append(harness)
        return harness

    yield make
    for h in harnesses:
        await h.finish()
        await h.store.close()
    await session.close()


async def test_delivers_signed_with_headers_promptly(
    make_harness: MakeHarness, receiver: TestReceiver
) -> None:
    """A woken worker delivers at once with Standard Webhooks headers, extra headers, a metric and a log."""
    store = CountingStore()
    h = await make_harness(store=store, worker_kw={"max_idle_s": 3600.0})
    with capture_logs() as logs:
        h.start()
        await eventually(lambda: store.lookups >= 1, 10, "the worker idle with nothing due")
        [event] = await add_events(h.store, JOB_A, ["failed"])
        h.worker.wake()
        # Without the wake, the idle worker would look again only after max_idle_s, an hour.
        [got] = await receiver.wait_for(1, within_s=15.0)
        await eventually(lambda: _has_state(h, DeliveryState.DELIVERED))
    assert got.id == event.id
    assert got.type == "job.failed"
    assert got.body == event.payload
    assert abs(got.timestamp - time.time()) < 5
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"] == f"job-watcher/{__version__}"
    assert got.headers["x-api-key"] == "receiver-key-42"
    assert h.count("success") == 1
    success = [e for e in logs if e["event"] == "delivery.success"]
    assert len(success) == 1
    expected = {"job_id": JOB_A, "workspace": "acme", "event_id": event.id, "webhook": "ops", "attempt": 1}
    assert {k: success[0][k] for k in expected} == expected
    assert success[0]["status_code"] == 204
    assert SECRET.removeprefix("whsec_") not in repr(logs)
    assert h.metrics.registry.get_sample_value("watcher_notify_lag_seconds_count") == 1


async def _has_state(h: Harness, state: DeliveryState, n: int = 1) -> bool:
    return len(await h.in_state(state)) >= n


async def test_rotation_old_secret_still_verifies(make_harness: MakeHarness) -> None:
    """During a rotation a receiver that only knows the old secret accepts the delivery."""
    old_receiver = TestReceiver([OLD_SECRET])
    url = await old_receiver.start()
    try:
        h = await make_harness(url=url, secrets=(SECRET, OLD_SECRET))
        [event] = await add_events(h.store, JOB_A, ["failed"])
        h.start()
        [got] = await old_receiver.wait_for(1)
        assert got.id == event.id
        assert len(got.headers["webhook-signature"].split(" ")) == 2
    finally:
        await old_receiver.stop()


async def test_503_then_recovery_keeps_the_id(make_harness: MakeHarness, receiver: TestReceiver) -> None:
    """Two 503s are retried; the third attempt succeeds with the same webhook-id."""
    receiver.fail_next(2, 503)
    h = await make_harness()
    [event] = await add_events(h.store, JOB_A, ["failed"])
    h.start()
    [got] = await receiver.wait_for(1)
    assert got.id == event.id
    assert got.attempt == 3
    assert [i for i, _ in receiver.requests] == [event.id] * 3
    await eventually(lambda: _has_state(h, DeliveryState.DELIVERED))
    [delivered] = await h.in_state(DeliveryState.DELIVERED)
    assert delivered.attempts == 3
    assert (h.count("retry"), h.count("success")) == (2, 1)


async def test_410_is_dead_at_once(make_harness: MakeHarness, receiver: TestReceiver) -> None:
    """A 410 Gone ends the delivery after one attempt."""
    receiver.fail_next(1, 410)
    h = await make_harness()
    [event] = await add_events(h.store, JOB_A, ["failed"])
    h.start()
    await eventually(lambda: _has_state(h, DeliveryState.DEAD))
    [dead] = await h.in_state(DeliveryState.DEAD)
    assert dead.attempts == 1
    assert dead.last_error is not None
    assert "410" in dead.last_error
    assert receiver.attempts[event.id] == 1
    assert h.count("dead") == 1


async def test_redirect_is_retried_not_followed(make_harness: MakeHarness, receiver: TestReceiver) -> None:
    """A 302 counts as a failure; the Location is never requested."""
    receiver.fail_next(2, 302)
    h = await make_harness()
    await add_events(h.store, JOB_A, ["failed"])
    h.start()
    [got] = await receiver.wait_for(1)
    assert got.attempt == 3
    assert receiver.redirect_hits == 0
    assert h.count("retry") == 2


async def test_max_attempts_then_dead(make_harness: MakeHarness, receiver: TestReceiver) -> None:
    """A receiver that keeps failing gets exactly max_attempts attempts, then the delivery is dead."""
    receiver.set_status(500)
    store = CountingStore()
    h = await make_harness(store=store, max_attempts=3)
    [event] = await add_events(h.store, JOB_A, ["failed"])
    h.start()
    await eventually(lambda: _has_state(h, DeliveryState.DEAD))
    claims = store.claims
    # Two more claim rounds after it is dead: a wrong extra attempt would have been claimed by now.
    await eventually(lambda: store.claims >= claims + 2, 10, "two more claim rounds")
    [dead] = await h.in_state(DeliveryState.DEAD)
    assert dead.attempts == 3
    assert dead.last_error is not None
    assert dead.last_error.startswith("HTTP 500")
    assert receiver.attempts[event.id] == 3
    assert (h.count("retry"), h.count("dead")) == (2, 1)


async def test_order_per_job_kept_while_first_is_retried(
    make_harness: MakeHarness, receiver: TestReceiver
) -> None:
    """A job's second event waits for its first, which is being retried; another job is not held up."""
    h = await make_harness(retry_initial_s=0.05, retry_max_s=0.05)
    first, second = await add_events(h.store, JOB_A, ["active", "failed"])
    [other] = await add_events(h.store, JOB_B, ["failed"])
    receiver.fail_next(3, 503, only_id=first.id)
    h.start()
    await receiver.wait_for(3)
    assert receiver.ids().index(first.id) < receiver.ids().index(second.id)
    assert receiver.ids()[0] == other.id
    assert receiver.attempts[second.id] == 1
    seen = [i for i, _ in receiver.requests]
    assert seen.index(second.id) > max(n for n, i in enumerate(seen) if i == first.id)


async def test_retry_after_is_honoured(make_harness: MakeHarness, receiver: TestReceiver) -> None:
    """A Retry-After longer than the backoff delays the next attempt at least that long."""
    receiver.fail_next(1, 503, retry_after=0.4)
    h = await make_harness()
    [event] = await add_events(h.store, JOB_A, ["failed"])
    h.start()
    await receiver.wait_for(1)
    (_, t1), (_, t2) = receiver.requests
    assert t2 - t1 >= 0.38
    assert receiver.attempts[event.id] == 2


async def test_slack_body_shape(make_harness: MakeHarness, receiver: TestReceiver) -> None:
    """A slack target gets {"text": one line} naming the job, its failure and its labels."""
    h = await make_harness(format="slack")
    await add_events(h.store, JOB_A, ["failed"])
    h.start()
    [got] = await receiver.wait_for(1)
    assert got.type is None
    assert got.body == {
        "text": ":x: job 5135bfe3… (customer.createBatch) failed in workspace acme: row 17: invalid email "
        "[team=billing]"
    }


async def test_stop_drains_in_flight(make_harness: MakeHarness, receiver: TestReceiver) -> None:
    """After stop, the in-flight send completes and is recorded before run() returns."""
    receiver.delay_s = 0.3
    h = await make_harness()
    await add_events(h.store, JOB_A, ["failed"])
    h.start()
    await eventually(lambda: _true(receiver.in_progress == 1))
    h.stop.set()
    assert h.task is not None
    await asyncio.wait_for(h.task, 3.0)
    assert len(receiver.deliveries) == 1
    assert await _has_state(h, DeliveryState.DELIVERED)
    assert h.task.done()  # so a stopped worker takes nothing more: nothing runs that could


async def _true(value: bool) -> bool:
    return value


async def test_concurrency_is_bounded(make_harness: MakeHarness, receiver: TestReceiver) -> None:
    """No more sends run at once than the configured concurrency, and all of them arrive."""
    receiver.delay_s = 0.03
    h = await make_harness(worker_kw={"concurrency": 3})
    for n in range(12):
        await add_events(h.store, f"00000000-0000-4000-8000-{n:012d}", ["failed"])
    h.start()
    await receiver.wait_for(12)
    assert receiver.max_in_progress == 3


@pytest.mark.parametrize(("case", "reason"), [("refused", "connection error"), ("slow", "timeout")])
async def test_transport_failures_are_retried(
    make_harness: MakeHarness, receiver: TestReceiver, case: str, reason: str
) -> None:
    """Connection errors and timeouts fail the attempt, never the worker, and end dead after max_attempts."""
    if case == "slow":
        receiver.delay_s = 1.0
        h = await make_harness(timeout_s=0.1, max_attempts=2)
    else:
        h = await make_harness(url=f"http://127.0.0.1:{free_port()}/hook", max_attempts=2)
    await add_events(h.store, JOB_A, ["failed"])
    h.start()
    await eventually(lambda: _has_state(h, DeliveryState.DEAD))
    [dead] = await h.in_state(DeliveryState.DEAD)
    assert dead.last_error is not None
    assert dead.last_error.startswith(reason)
    assert h.task is not None
    assert not h.task.done()


async def test_wrong_secret_is_rejected_and_retried(
    make_harness: MakeHarness, receiver: TestReceiver
) -> None:
    """A receiver that cannot verify answers 401; that is retried and never recorded as delivered."""
    h = await make_harness(secrets=(OLD_SECRET,), max_attempts=2)
    await add_events(h.store, JOB_A, ["failed"])
    h.start()
    await eventually(lambda: _has_state(h, DeliveryState.DEAD))
    assert receiver.rejected == 2
    assert receiver.deliveries == []


async def test_unconfigured_webhook_is_dead(make_harness: MakeHarness, receiver: TestReceiver) -> None:
    """A delivery for a webhook removed from the config is marked dead without a request."""
    h = await make_harness()
    await add_events(h.store, JOB_A, ["failed"], webhooks=("removed",))
    h.start()
    await eventually(lambda: _has_state(h, DeliveryState.DEAD))
    [dead] = await h.in_state(DeliveryState.DEAD)
    assert dead.last_error == NOT_CONFIGURED
    assert receiver.requests == []


class _RefusingStore(MemoryStore):
    """A store that refuses every record of one job's deliveries, as a database refuses a row's data."""

    async def finish_delivery(self, delivery: Delivery, update: DeliveryUpdate) -> bool:
        if delivery.event.job_id == JOB_A:
            raise StoreError("value refused for this row")
        return await super().finish_delivery(delivery, update)


async def test_a_delivery_that_cannot_be_recorded_fails_nothing_else(
    make_harness: MakeHarness, receiver: TestReceiver
) -> None:
    """A store error that belongs to one delivery is contained (SPEC §16): logged and counted, that delivery
    stays pending to be tried again, and the worker goes on delivering the others."""
    h = await make_harness(store=_RefusingStore())
    with capture_logs() as logs:
        await add_events(h.store, JOB_A, ["failed"])
        await add_events(h.store, JOB_B, ["failed"])
        h.start()
        await eventually(lambda: _has_state(h, DeliveryState.DELIVERED))
        await eventually(lambda: _logged(logs, "delivery.not_recorded"))
    assert h.task is not None and not h.task.done()
    [delivered] = await h.in_state(DeliveryState.DELIVERED)
    assert delivered.event.job_id == JOB_B
    [pending] = await h.in_state(DeliveryState.PENDING)
    assert pending.event.job_id == JOB_A
    failed = [e for e in logs if e["event"] == "delivery.handling_failed"]
    assert failed and failed[0]["delivery_id"] == pending.id and failed[0]["exc_info"] is not None
    errors = h.metrics.registry.get_sample_value("watcher_internal_errors_total", {"loop": "delivery"})
    assert errors is not None and errors >= 1


async def _logged(logs: list[dict[str, Any]], event: str) -> bool:
    return any(e["event"] == event for e in logs)


async def test_demo_receiver_verifies_records_and_scripts(make_harness: MakeHarness) -> None:
    """watcher.devtools.receiver.Receiver accepts our signatures, follows its script and rejects bad ones."""
    seen: list[str] = []
    demo = Receiver([SECRET], on_delivery=lambda d: seen.append(d.webhook_id))
    url = await demo.start()
    try:
        demo.fail_next(1, 503, retry_after=0.05)
        h = await make_harness(url=url)
        [event] = await add_events(h.store, JOB_A, ["failed"])
        h.start()
        await eventually(lambda: _has_state(h, DeliveryState.DELIVERED))
        [got] = demo.deliveries
        assert (got.webhook_id, got.type, got.body) == (event.id, "job.failed", event.payload)
        assert demo.attempts[event.id] == 2
        assert seen == [event.id]
        assert "receiver-key-42" not in repr(got)
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=b"{}", headers={"webhook-id": "x"}) as resp:
                assert resp.status == 401
            demo.set_status(500)
            body = b'{"type":"job.success"}'
            headers = WebhookSender(session).build_headers(
                h.target, Delivery(99, event, "ops", DeliveryState.PENDING, 0, 0.0, 0.0), body
            )
            async with session.post(url, data=body, headers=headers) as resp:
                assert resp.status == 500
        assert demo.rejected == 1
        assert len(demo.deliveries) == 1
    finally:
        await demo.stop()
