"""The delivery worker in burst mode (`DeliveryWorker.run_until_idle`): the real worker on a `MemoryStore`
and a `ManualClock`, with a small fake at the send seam (a receiver that answers from a script, at once).

Each burst sends what is due now, records every outcome and returns; retries due later wait until the test
moves the clock. The HTTP transport itself is tested against real receivers in tests/integration.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from prometheus_client import CollectorRegistry

from watcher.delivery.target import WebhookTarget
from watcher.delivery.webhook import SendResult
from watcher.delivery.worker import NOT_CONFIGURED, DeliveryWorker
from watcher.devtools.clock import ManualClock
from watcher.events import transition_event
from watcher.metrics import Metrics
from watcher.models import (
    DeadReason,
    Delivery,
    DeliveryOutcome,
    DeliveryState,
    NewEvent,
    Registration,
    SavedPoll,
    Source,
)
from watcher.store.memory import MemoryStore

JOBS = [f"00000000-0000-4000-8000-{n:012d}" for n in range(1, 7)]
OPS = WebhookTarget(
    "ops",
    "http://127.0.0.1:9/hook",
    ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",),
    frozenset({"job.active", "job.failed"}),
    max_attempts=3,
    retry_initial_s=10.0,
    retry_max_s=40.0,
)
OK = SendResult(DeliveryOutcome.SUCCESS, 200, None, "200", 0.01)
UNAVAILABLE = SendResult(DeliveryOutcome.RETRY, 503, None, "503", 0.01)
GONE = SendResult(DeliveryOutcome.DEAD, 410, None, "410", 0.01, DeadReason.GONE)


class FakeSender:
    """The send seam: answers from a script (the last answer repeats), records each attempt and how many
    were in flight at once."""

    def __init__(self) -> None:
        self.script: list[SendResult] = [OK]
        self.sent: list[tuple[str, str]] = []  # (job id, event type) per attempt
        self.in_flight = 0
        self.max_in_flight = 0

    async def send(self, target: WebhookTarget, delivery: Delivery) -> SendResult:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # an await, as a real request has: others may start meanwhile
            self.sent.append((delivery.event.job_id, delivery.event.type))
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]
        finally:
            self.in_flight -= 1


class Env:
    def __init__(self, concurrency: int = 4) -> None:
        self.clock = ManualClock()
        self.store = MemoryStore()
        self.sender = FakeSender()
        self.metrics = Metrics(CollectorRegistry(), webhooks=("ops",), default_collectors=False)
        self.worker = DeliveryWorker(
            self.store,
            self.sender,
            {"ops": OPS},
            self.metrics,
            self.clock,
            random.Random(3),
            concurrency=concurrency,
        )

    async def events(self, job_id: str, *statuses: str, webhook: str = "ops") -> None:
        """One transition event per status, each with a delivery to `webhook`, as the scheduler saves them."""
        now = self.clock.now()
        await self.store.register([Registration(job_id, "acme", Source.API)], now)
        previous = None
        for status in statuses:
            [watch] = await self.store.claim_due(now + 3600 if previous else now, 1, 60.0)
            assert watch.job_id == job_id
            # Parked far ahead, so that the next claim of this helper finds the next job's watch.
            watch.status, watch.polls, watch.next_poll_at = status, watch.polls + 1, now + 3600
            body = {"id": job_id, "status": status, "updatedAt": "2023-11-14T22:13:20.000Z", "error": None}
            event = transition_event(watch, body, previous, now)
            saved = SavedPoll(watch, (NewEvent(event, (webhook,)),))
            assert await self.store.save_polls([saved]) == [True]
            previous = status

    async def states(self) -> list[DeliveryState]:
        return [d.state for d in await self.store.list_deliveries()]

    def count(self, outcome: str) -> float:
        labels = {"webhook": "ops", "outcome": outcome}
        return self.metrics.registry.get_sample_value("watcher_webhook_deliveries_total", labels) or 0.0


@pytest.fixture
def env() -> Env:
    return Env()


async def test_a_burst_sends_everything_due_and_records_it(env: Env) -> None:
    """Six jobs, one event each, four at a time at most: one burst delivers all six and returns."""
    for job in JOBS:
        await env.events(job, "failed")
    assert await env.worker.run_until_idle() == len(JOBS)
    assert sorted(job for job, _ in env.sender.sent) == JOBS
    assert await env.states() == [DeliveryState.DELIVERED] * len(JOBS)
    assert 1 < env.sender.max_in_flight <= 4
    assert env.count("success") == len(JOBS)
    assert await env.worker.run_until_idle() == 0
    assert len(env.sender.sent) == len(JOBS)


async def test_one_jobs_events_go_out_in_order_within_one_burst(env: Env) -> None:
    """active then failed for one job and webhook: the second waits for the first, in the same burst."""
    await env.events(JOBS[0], "active", "failed")
    assert await env.worker.run_until_idle() == 2
    assert env.sender.sent == [(JOBS[0], "job.active"), (JOBS[0], "job.failed")]


async def test_a_failed_attempt_waits_for_its_backoff_then_goes_out(env: Env) -> None:
    """A 503: pending with a backoff of at most `retry_initial_s`; nothing is sent before it is due (the
    sender's count says so after a burst), then the retry delivers it."""
    env.sender.script = [UNAVAILABLE, OK]
    await env.events(JOBS[0], "failed")
    assert await env.worker.run_until_idle() == 1
    [pending] = await env.store.list_deliveries()
    assert (pending.state, pending.attempts, pending.last_error) == (DeliveryState.PENDING, 1, "503")
    delay = pending.next_attempt_at - env.clock.now()
    assert 0 < delay <= OPS.retry_initial_s
    await env.clock.advance(delay / 2)
    assert await env.worker.run_until_idle() == 0
    assert len(env.sender.sent) == 1
    await env.clock.advance(delay)
    assert await env.worker.run_until_idle() == 1
    assert await env.states() == [DeliveryState.DELIVERED]
    assert (env.count("retry"), env.count("success")) == (1, 1)


async def test_the_last_attempt_makes_it_dead_and_a_later_event_waits_behind_it(env: Env) -> None:
    """Three failing attempts (max_attempts): dead for `max_attempts`. A later event of the same job waits
    behind it, and goes out in the burst that settles its predecessor."""
    env.sender.script = [UNAVAILABLE] * OPS.max_attempts + [OK]
    await env.events(JOBS[0], "active", "failed")
    for _ in range(OPS.max_attempts - 1):
        assert await env.worker.run_until_idle() == 1
        await env.clock.advance(OPS.retry_max_s)
    assert env.sender.sent == [(JOBS[0], "job.active")] * (OPS.max_attempts - 1)
    assert await env.worker.run_until_idle() == 2
    assert env.sender.sent[-2:] == [(JOBS[0], "job.active"), (JOBS[0], "job.failed")]
    dead, delivered = sorted(await env.store.list_deliveries(), key=lambda d: d.id)
    assert (dead.state, dead.attempts) == (DeliveryState.DEAD, OPS.max_attempts)
    assert delivered.state is DeliveryState.DELIVERED
    assert (env.count("retry"), env.count("dead"), env.count("success")) == (2, 1, 1)


async def test_a_dead_answer_is_dead_at_once_and_an_unknown_webhook_is_never_sent(env: Env) -> None:
    """410 Gone: dead after one attempt, reason `gone`. A delivery to a webhook no longer configured: dead
    as not configured, without a send."""
    env.sender.script = [GONE]
    await env.events(JOBS[0], "failed")
    await env.events(JOBS[1], "failed", webhook="removed")
    assert await env.worker.run_until_idle() == 2
    assert env.sender.sent == [(JOBS[0], "job.failed")]
    gone = await env.store.list_deliveries(webhook="ops")
    removed = await env.store.list_deliveries(webhook="removed")
    assert [(d.state, d.last_error) for d in gone] == [(DeliveryState.DEAD, "410")]
    assert [(d.state, d.last_error) for d in removed] == [(DeliveryState.DEAD, NOT_CONFIGURED)]


async def test_concurrency_one_sends_one_at_a_time() -> None:
    """`concurrency=1`: never two sends at once, and still everything in one burst."""
    env = Env(concurrency=1)
    for job in JOBS:
        await env.events(job, "failed")
    assert await env.worker.run_until_idle() == len(JOBS)
    assert env.sender.max_in_flight == 1
    assert await env.states() == [DeliveryState.DELIVERED] * len(JOBS)
