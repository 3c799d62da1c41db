"""Per-endpoint concurrency (issue 14): a receiver that hangs holds only its own slots, so a healthy
webhook's deliveries go out as fast as when it is alone. A real DeliveryWorker, real servers on loopback."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from tests.integration.test_delivery import SECRET, add_events
from tests.support.standard_webhooks import TestReceiver
from watcher.bench.latency import hung_receiver, percentile
from watcher.clock import SystemClock
from watcher.delivery.target import WebhookTarget
from watcher.delivery.webhook import WebhookSender
from watcher.delivery.worker import DeliveryWorker
from watcher.metrics import Metrics
from watcher.store.memory import MemoryStore

JOBS = [f"00000000-0000-4000-8000-{n:012d}" for n in range(12)]
HUNG_TIMEOUT_S = 2.0


@pytest.fixture
async def good() -> AsyncIterator[TestReceiver]:
    """The healthy receiver."""
    r = TestReceiver([SECRET])
    await r.start()
    yield r
    await r.stop()


async def latencies(good: TestReceiver, hung_url: str | None, hung_concurrency: int) -> list[float]:
    """Seconds from each event's creation to its arrival at `good`, next to `hung_url` (if any)."""
    assert good.url is not None
    store = MemoryStore()
    targets = {"good": WebhookTarget("good", good.url, (SECRET,), frozenset({"job.failed"}), timeout_s=2.0)}
    hooks: tuple[str, ...] = ("good",)
    if hung_url is not None:
        hooks = ("hung", "good")  # the hung one's deliveries come first in every claim
        targets["hung"] = WebhookTarget(
            "hung", hung_url, (SECRET,), frozenset({"job.failed"}), timeout_s=HUNG_TIMEOUT_S,
            concurrency=hung_concurrency,
        )  # fmt: skip
    events = {e.id: e for job in JOBS for e in await add_events(store, job, ["failed"], webhooks=hooks)}
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        worker = DeliveryWorker(
            store,
            WebhookSender(session, SystemClock()),
            targets,
            Metrics(CollectorRegistry(), webhooks=tuple(targets)),
            SystemClock(),
            random.Random(5),
            concurrency=8,
            max_idle_s=0.05,
        )
        start = time.time()
        task = asyncio.create_task(worker.run(stop))
        try:
            await good.wait_for(len(JOBS), within_s=15 * HUNG_TIMEOUT_S)
        finally:
            stop.set()
            await asyncio.wait_for(task, 3 * HUNG_TIMEOUT_S)
    return [d.received_at - max(start, events[d.id].created_at) for d in good.deliveries]


async def test_a_hung_neighbour_does_not_delay_a_healthy_webhook(good: TestReceiver) -> None:
    """With the hung webhook's budget (4 of 8 slots) the healthy one's p99 stays far below the hung
    timeout, as alone; with a budget of every slot (as before) it waits for the hung timeouts."""
    alone = await latencies(good, None, 4)
    good.deliveries.clear()
    async with hung_receiver() as hung_url:
        beside = await latencies(good, hung_url, 4)
        good.deliveries.clear()
        unbounded = await latencies(good, hung_url, 8)
    normal_p99 = percentile(alone, 99)
    assert percentile(beside, 99) < max(1.0, 10 * normal_p99), (normal_p99, sorted(beside)[-3:])
    assert percentile(unbounded, 99) >= HUNG_TIMEOUT_S * 0.9  # what the budget prevents
