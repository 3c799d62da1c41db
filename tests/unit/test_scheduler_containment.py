"""The scheduler contains one watch's failure (SPEC §16): the watch is counted and quarantined, the others go
on, the loop never dies. The real `Scheduler` on a `MemoryStore`, with small fakes at two seams: the fetch
function (an upstream that answers at once) and, for the batch case, a store whose writes refuse one row."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from tests.support.eventually import eventually
from watcher.clock import SystemClock
from watcher.containment import QUARANTINE_AFTER, describe
from watcher.errors import StoreError
from watcher.metrics import Metrics
from watcher.models import PollOutcome, PollResult, Registration, SavedPoll, Source, Watch
from watcher.polling.buckets import Buckets
from watcher.polling.policy import PollingPolicy
from watcher.polling.scheduler import Scheduler
from watcher.store.memory import MemoryStore

POISONED = "00000000-0000-4000-8000-000000000000"
OTHERS = [f"00000000-0000-4000-8000-{n:012d}" for n in range(1, 9)]
POLICY = PollingPolicy(
    initial_interval_s=0.01,
    multiplier=1.5,
    max_interval_s=0.05,
    jitter=0.1,
    max_watch_s=600.0,
    not_found_limit=5,
    error_backoff_max_s=0.05,
)


class Upstream:
    """Every job is found `failed` at once (a terminal status: one poll per healthy job)."""

    def __init__(self) -> None:
        self.polls: dict[str, int] = {}

    async def get_job(self, job_id: str, workspace: str) -> PollResult:
        self.polls[job_id] = self.polls.get(job_id, 0) + 1
        body = {"id": job_id, "status": "failed", "updatedAt": "2026-01-01T00:00:00Z", "error": "x"}
        return PollResult(PollOutcome.OK, body=body, status_code=200)


class RefusingStore(MemoryStore):
    """A store whose database refuses every write of one row, failing the whole batch that carries it."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def save_polls(self, polls: Sequence[SavedPoll]) -> list[bool]:
        self.batches.append(len(polls))
        if any(p.watch.job_id == POISONED for p in polls):
            raise StoreError("store: value refused for the poisoned row")
        return await super().save_polls(polls)


def _route(event_type: str, watch: Watch) -> tuple[str, ...]:
    if watch.job_id == POISONED:
        raise RuntimeError("a bug in routing this one job")
    return ("ops",)


async def _run_until(store: MemoryStore, route: object, done: object, metrics: Metrics) -> Upstream:
    clock = SystemClock()
    upstream = Upstream()
    scheduler = Scheduler(
        store,
        upstream,
        POLICY,
        Buckets(clock, 10_000.0),
        metrics,
        clock,
        random.Random(5),
        route,  # type: ignore[arg-type]
        max_concurrency=4,
    )
    await store.register([Registration(j, "acme", Source.API) for j in [POISONED, *OTHERS]], clock.now())
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))

    async def finished() -> bool:
        assert not task.done(), f"the scheduler loop ended: {task.exception()!r}"
        return bool(await done())  # type: ignore[operator]

    await eventually(finished, 20, "the poisoned watch quarantined, the others finished")
    stop.set()
    await asyncio.wait_for(task, 10)  # returns normally: nothing escaped
    return upstream


async def _quarantined_and_others_finished(store: MemoryStore) -> bool:
    poisoned = await store.get_watch(POISONED)
    others = [await store.get_watch(j) for j in OTHERS]
    return (
        poisoned is not None
        and poisoned.quarantined_at is not None
        and all(w is not None and w.final == "failed" for w in others)
    )


@pytest.mark.parametrize("where", ["decision", "save"])
async def test_one_failing_watch_is_quarantined_and_the_rest_goes_on(where: str) -> None:
    """A bug deciding one watch (the worker), or a store refusing its row (the batch writer): that watch
    fails `QUARANTINE_AFTER` times and is quarantined; every other watch is saved with its event."""
    store = RefusingStore() if where == "save" else MemoryStore()
    route = (lambda t, w: ("ops",)) if where == "save" else _route
    metrics = Metrics(CollectorRegistry(), webhooks=("ops",), default_collectors=False)
    upstream = await _run_until(store, route, lambda: _quarantined_and_others_finished(store), metrics)
    poisoned = await store.get_watch(POISONED)
    assert poisoned is not None
    assert poisoned.failures == QUARANTINE_AFTER
    expected = "StoreError" if where == "save" else "RuntimeError: a bug in routing this one job"
    assert poisoned.quarantine_reason is not None and poisoned.quarantine_reason.startswith(expected)
    assert upstream.polls[POISONED] == QUARANTINE_AFTER  # never polled again once quarantined
    for job in OTHERS:
        assert [e.type for e in await store.events_for(job)] == ["job.failed"]
    assert await store.events_for(POISONED) == []
    errors = metrics.registry.get_sample_value("watcher_internal_errors_total", {"loop": "scheduler"})
    assert errors == QUARANTINE_AFTER
    if isinstance(store, RefusingStore):
        assert max(store.batches) > 1  # the poisoned row shared batches with others, which were still saved


def test_describe_is_one_safe_line() -> None:
    """A failure's reason keeps its type and message, without lone surrogates, NULs or newlines; bounded."""

    class Broken(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    assert describe(ValueError("bad \ud800 value\x00\nsecond line")) == "ValueError: bad \\ud800 value?"
    assert describe(Broken()) == "Broken: (message unavailable)"
    assert len(describe(KeyError("x" * 1000))) == 300
