"""Grouped webhooks (`group_window_s`, SPEC §15) in the delivery worker: the real worker on a `MemoryStore`
and a `ManualClock`, in burst mode (and running, for the endpoint budget), with a scripted fake at the send
seam (as in test_delivery_worker).

What is checked: nothing goes before the window closes, then one message for everything waiting; the
message's id comes from its members; every member shares the outcome (delivered, retried with the same
attempt count, dead with the same reason); members past `max_delivery_age_s` are dead on their own; a job's
later event waits behind its earlier one; the breaker and the endpoint budget hold a grouped endpoint like
any other; and the pure rule of which heads form a group (`pick_group`).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from tests.support.eventually import eventually
from watcher.delivery.bodies import message_id, render_delivery
from watcher.delivery.breaker import Breakers
from watcher.delivery.grouped import as_message, split
from watcher.delivery.target import WebhookTarget
from watcher.delivery.webhook import SendResult
from watcher.delivery.worker import DeliveryWorker
from watcher.devtools.clock import ManualClock
from watcher.events import transition_event
from watcher.metrics import Metrics
from watcher.models import (
    Delivery,
    DeliveryOutcome,
    DeliveryState,
    Event,
    NewEvent,
    Registration,
    SavedPoll,
    Source,
)
from watcher.store.base import GroupKey, GroupPlan, pick_group
from watcher.store.memory import MemoryStore

JOBS = [f"00000000-0000-4000-8000-{n:012d}" for n in range(1, 31)]
WINDOW = 10.0
CHAT = WebhookTarget(
    "chat",
    "http://127.0.0.1:9/slack",
    (),
    frozenset({"job.active", "job.failed"}),
    format="slack",
    max_attempts=3,
    retry_initial_s=20.0,
    retry_max_s=40.0,
    group_window_s=WINDOW,
    breaker_failures=2,
    breaker_open_s=100.0,
)
OK = SendResult(DeliveryOutcome.SUCCESS, 200, None, "HTTP 200", 0.01)
UNAVAILABLE = SendResult(DeliveryOutcome.RETRY, 503, None, "HTTP 503", 0.01)


class GroupSender:
    """Answers from a script (the last answer repeats); records each message's members and its id."""

    def __init__(self) -> None:
        self.script: list[SendResult] = [OK]
        self.messages: list[tuple[str, list[str]]] = []  # (message id, member job ids)

    async def send(self, target: WebhookTarget, delivery: Delivery) -> SendResult:
        await asyncio.sleep(0)
        members = delivery.group or (delivery,)
        self.messages.append((message_id(delivery), [m.event.job_id for m in members]))
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


class Env:
    def __init__(
        self, target: WebhookTarget = CHAT, *, breakers: bool = False, sender: GroupSender | None = None
    ) -> None:
        self.clock = ManualClock()
        self.store = MemoryStore()
        self.sender = sender or GroupSender()
        self.metrics = Metrics(CollectorRegistry(), webhooks=("chat",), default_collectors=False)
        self.worker = DeliveryWorker(
            self.store,
            self.sender,
            {"chat": target},
            self.metrics,
            self.clock,
            random.Random(3),
            breakers=Breakers(self.store, self.clock, self.metrics, probe_lease_s=60.0) if breakers else None,
        )

    async def fail(self, job_id: str, *statuses: str) -> None:
        """Job `job_id` goes through `statuses` now, each transition an event for `chat`."""
        now = self.clock.now()
        await self.store.register([Registration(job_id, "acme", Source.API)], now)
        previous = None
        for status in statuses or ("failed",):
            [watch] = await self.store.claim_due(now + 3600 if previous else now, 1, 60.0)
            watch.status, watch.polls, watch.next_poll_at = status, watch.polls + 1, now + 3600
            body = {"id": job_id, "status": status, "updatedAt": f"2023-11-14T22:13:2{len(status)}Z"}
            saved = SavedPoll(watch, (NewEvent(transition_event(watch, body, previous, now), ("chat",)),))
            assert await self.store.save_polls([saved]) == [True]
            previous = status

    async def deliveries(self) -> list[Delivery]:
        return sorted(await self.store.list_deliveries(), key=lambda d: d.id)

    def count(self, outcome: str) -> float:
        labels = {"webhook": "chat", "outcome": outcome}
        return self.metrics.registry.get_sample_value("watcher_webhook_deliveries_total", labels) or 0.0


async def test_one_message_when_the_window_closes() -> None:
    """Events arriving during the window wait; when it closes, one message carries all of them, counted
    as one attempt of each member, and observed once in the group-size histogram."""
    env = Env()
    for i, job in enumerate(JOBS[:20]):
        await env.fail(job)
        await env.clock.advance(WINDOW / 40 if i else 0.0)
    assert await env.worker.run_until_idle() == 0
    assert env.sender.messages == []
    await env.clock.advance(WINDOW)
    assert await env.worker.run_until_idle() == 1
    [(mid, jobs)] = env.sender.messages
    assert jobs == JOBS[:20]
    assert {d.state for d in await env.deliveries()} == {DeliveryState.DELIVERED}
    assert mid not in {d.event.id for d in await env.deliveries()}  # the group's id, not an event's
    assert env.count("success") == 20
    registry = env.metrics.registry
    assert registry.get_sample_value("watcher_webhook_group_members_count", {"webhook": "chat"}) == 1
    assert registry.get_sample_value("watcher_webhook_group_members_sum", {"webhook": "chat"}) == 20
    # The next failure opens a new window.
    await env.fail(JOBS[20])
    assert await env.worker.run_until_idle() == 0
    await env.clock.advance(WINDOW)
    assert await env.worker.run_until_idle() == 1
    assert [jobs for _, jobs in env.sender.messages] == [JOBS[:20], [JOBS[20]]]


async def test_a_failed_message_is_retried_whole_with_the_same_id() -> None:
    """A 503: every member pending with one attempt and the same reason; the retry is the same message
    (same members, same id), whatever failed meanwhile waits for its own window."""
    env = Env()
    env.sender.script = [UNAVAILABLE, OK]
    for job in JOBS[:5]:
        await env.fail(job)
    await env.clock.advance(WINDOW)
    assert await env.worker.run_until_idle() == 1
    pending = await env.deliveries()
    assert {(d.state, d.attempts, d.last_error) for d in pending} == {(DeliveryState.PENDING, 1, "HTTP 503")}
    assert len({d.next_attempt_at for d in pending}) == 1
    await env.fail(JOBS[5])  # arrives while the group waits for its retry
    await env.clock.advance(CHAT.retry_max_s)
    assert await env.worker.run_until_idle() == 2
    first, *later = env.sender.messages
    assert first[1] == JOBS[:5]
    assert first in later and ([JOBS[5]] in [jobs for _, jobs in later])
    done = await env.deliveries()
    assert {d.state for d in done} == {DeliveryState.DELIVERED}
    assert {d.attempts for d in done if d.event.job_id in JOBS[:5]} == {2}
    assert (env.count("retry"), env.count("success")) == (5, 6)


async def test_dead_together_after_the_last_attempt() -> None:
    env = Env()
    env.sender.script = [UNAVAILABLE]
    for job in JOBS[:4]:
        await env.fail(job)
    await env.clock.advance(WINDOW)
    for _ in range(CHAT.max_attempts):
        assert await env.worker.run_until_idle() == 1
        await env.clock.advance(CHAT.retry_max_s)
    assert len({mid for mid, _ in env.sender.messages}) == 1 and len(env.sender.messages) == 3
    dead = await env.deliveries()
    assert {(d.state, d.attempts, d.last_error) for d in dead} == {(DeliveryState.DEAD, 3, "HTTP 503")}
    assert env.count("dead") == 4


async def test_members_past_their_age_are_dead_the_others_go() -> None:
    """`max_delivery_age_s` is each member's own: a member too old when its message is claimed is dead
    (`max_age`), the others go (the age sweep, which runs every few seconds, did not reach it yet)."""
    env = Env(replace(CHAT, max_delivery_age_s=WINDOW + 2))
    await env.fail(JOBS[0])
    await env.clock.advance(5.0)
    await env.fail(JOBS[1])
    await env.clock.advance(4.0)
    assert await env.worker.run_until_idle() == 0  # the window is open; the sweep finds nothing old
    await env.clock.advance(3.5)  # the window closed; JOBS[0] is 12.5 s old, JOBS[1] 7.5 s
    assert await env.worker.run_until_idle() == 1
    assert [jobs for _, jobs in env.sender.messages] == [[JOBS[1]]]
    old, sent = await env.deliveries()
    assert (old.state, sent.state) == (DeliveryState.DEAD, DeliveryState.DELIVERED)
    assert old.last_error is not None and old.last_error.startswith("max_age")
    assert (env.count("dead"), env.count("success")) == (1, 1)


async def test_a_jobs_later_event_waits_for_the_next_message() -> None:
    env = Env()
    await env.fail(JOBS[0], "active", "failed")
    await env.fail(JOBS[1])
    await env.clock.advance(WINDOW)
    await env.worker.run_until_idle()
    assert [jobs for _, jobs in env.sender.messages] == [[JOBS[0], JOBS[1]], [JOBS[0]]]
    first, second = env.sender.messages
    assert first[0] != second[0]
    types = [d.event.type for d in await env.deliveries() if d.event.job_id == JOBS[0]]
    assert types == ["job.active", "job.failed"]


async def test_an_open_breaker_holds_the_grouped_webhook() -> None:
    """Two failed messages open the endpoint's breaker: no message goes while it is open, then one probe
    carries the whole group (its attempts unspent by the wait)."""
    env = Env(breakers=True)
    env.sender.script = [UNAVAILABLE, UNAVAILABLE, OK]
    for job in JOBS[:3]:
        await env.fail(job)
    await env.clock.advance(WINDOW)
    assert await env.worker.run_until_idle() == 1
    await env.clock.advance(CHAT.retry_max_s)
    assert await env.worker.run_until_idle() == 1
    (health,) = await env.store.endpoints()
    assert health.state != "closed"
    await env.clock.advance(CHAT.retry_max_s)
    assert await env.worker.run_until_idle() == 0  # still open: nothing sent
    assert len(env.sender.messages) == 2
    await env.clock.advance(CHAT.breaker_open_s)
    assert await env.worker.run_until_idle() == 1
    assert [jobs for _, jobs in env.sender.messages] == [JOBS[:3]] * 3
    assert {(d.state, d.attempts) for d in await env.deliveries()} == {(DeliveryState.DELIVERED, 2)}


async def test_the_slack_body_counts_every_member() -> None:
    env = Env()
    for job in JOBS[:14]:
        await env.fail(job)
    members = sorted(await env.store.list_deliveries(), key=lambda d: d.id)
    body = render_delivery(CHAT, as_message(members)).body.decode()
    assert "14 jobs failed in acme" in body
    assert "and 4 more" in body


def event(i: int) -> Event:
    return Event(f"e{i}", JOBS[i], "acme", "job.failed", float(i), {"type": "job.failed", "data": {}})


def test_split_keeps_each_side_whole() -> None:
    d = [Delivery(i, event(i), "chat", DeliveryState.PENDING, 0, 0.0, float(i), lease=7) for i in range(1, 5)]
    young, old = split(as_message(d), lambda m: m.created_at > 2)
    assert young is not None and old is not None
    assert [m.id for m in young.group] == [3, 4] and young.id == 3
    assert [m.id for m in old.group] == [1, 2] and old.id == 1
    assert split(as_message(d), lambda m: True)[1] is None


def test_pick_group_rules() -> None:
    """A group retried together goes first; fresh heads wait until their window (from the oldest) closes."""
    now = 100.0
    assert pick_group(GroupPlan(None, None), now, 10) is None
    assert pick_group(GroupPlan(None, 95.0), now, 10) == 105.0
    assert pick_group(GroupPlan(None, 90.0), now, 10) == GroupKey(0, None)
    assert pick_group(GroupPlan((2, 97.5), 50.0), now, 10) == GroupKey(2, 97.5)


class GatedSender(GroupSender):
    """A `GroupSender` whose sends wait for `gate`, counting how many are in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0

    async def send(self, target: WebhookTarget, delivery: Delivery) -> SendResult:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            return await super().send(target, delivery)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_the_endpoint_budget_holds_grouped_messages(concurrency: int) -> None:
    """The running worker: a message in flight holds one of the webhook's `concurrency` slots. With one
    slot, the next window's message waits until the first is answered; with two, it goes meanwhile."""
    sender = GatedSender()
    env = Env(replace(CHAT, concurrency=concurrency), sender=sender)
    stop = asyncio.Event()
    task = asyncio.create_task(env.worker.run(stop))
    try:
        for job in JOBS[:3]:
            await env.fail(job)
        env.worker.wake()
        await env.clock.advance(WINDOW)
        await eventually(lambda: sender.in_flight == 1, 5, "the first message in flight")
        for job in JOBS[3:6]:
            await env.fail(job)
        env.worker.wake()
        await env.clock.advance(WINDOW)  # the second window closed
        if concurrency == 1:
            # The worker has claimed since and parked on the clock: the second message was not claimed.
            await eventually(lambda: env.clock.sleepers > 0, 5, "the worker parked")
            assert sender.in_flight == 1
        else:
            await eventually(lambda: sender.in_flight == 2, 5, "the second message in flight")
        sender.gate.set()
        await eventually(lambda: len(sender.messages) == 2, 5, "both messages sent")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert sender.max_in_flight == concurrency
    assert [jobs for _, jobs in sender.messages] in ([JOBS[:3], JOBS[3:6]], [JOBS[3:6], JOBS[:3]])
    assert {d.state for d in await env.deliveries()} == {DeliveryState.DELIVERED}
