"""The scheduler in burst mode (`Scheduler.run_until_idle`): the real `Scheduler` on a `MemoryStore` and a
`ManualClock`, with a small fake at the fetch seam (an upstream that answers at once, from a script).

Each burst polls what is due now and returns once every result is saved, so a test moves the clock and
counts polls, events and metrics without sleeping.
"""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry

from watcher.devtools.clock import ManualClock
from watcher.errors import StoreUnavailable
from watcher.metrics import Metrics
from watcher.models import PollOutcome, PollResult, Registration, Source, Watch
from watcher.polling.buckets import Buckets
from watcher.polling.policy import PollingPolicy
from watcher.polling.scheduler import Scheduler
from watcher.store.memory import MemoryStore

POLICY = PollingPolicy(
    initial_interval_s=1.0,
    multiplier=2.0,
    max_interval_s=8.0,
    jitter=0.0,
    max_watch_s=100.0,
    not_found_limit=3,
    error_backoff_max_s=4.0,
)
JOBS = [f"00000000-0000-4000-8000-{n:012d}" for n in range(1, 11)]


class Upstream:
    """The fetch seam: each job answers from its script (the last answer repeats), at once."""

    def __init__(self) -> None:
        self.script: dict[str, list[PollResult]] = {}
        self.polls: dict[str, int] = {}

    def answers(self, job_id: str, *results: PollResult) -> None:
        self.script[job_id] = list(results)

    async def get_job(self, job_id: str, workspace: str) -> PollResult:
        self.polls[job_id] = self.polls.get(job_id, 0) + 1
        script = self.script.get(job_id) or [status("active")]
        return script.pop(0) if len(script) > 1 else script[0]

    @property
    def total(self) -> int:
        return sum(self.polls.values())


def status(name: str) -> PollResult:
    """An upstream answer with job status `name`."""
    body = {"id": "x", "status": name, "updatedAt": "2023-11-14T22:13:20.000Z", "error": None}
    return PollResult(PollOutcome.OK, body=body, status_code=200)


def failure(outcome: PollOutcome, retry_after_s: float | None = None) -> PollResult:
    return PollResult(outcome, status_code=None, detail=outcome.value, retry_after_s=retry_after_s)


class Env:
    def __init__(self, store: MemoryStore | None = None) -> None:
        self.clock = ManualClock()
        self.store = store or MemoryStore()
        self.upstream = Upstream()
        self.metrics = Metrics(CollectorRegistry(), webhooks=("ops",), default_collectors=False)
        self.woken = 0
        self.scheduler = Scheduler(
            self.store,
            self.upstream,
            POLICY,
            Buckets(self.clock, 1_000_000.0),
            self.metrics,
            self.clock,
            random.Random(1),
            lambda event_type, watch: ("ops",),
            max_concurrency=4,
            on_events=self.wake,
        )

    def wake(self) -> None:
        self.woken += 1

    async def watch(self, *jobs: str) -> None:
        await self.store.register([Registration(j, "acme", Source.API) for j in jobs], self.clock.now())

    async def get(self, job_id: str) -> Watch:
        watch = await self.store.get_watch(job_id)
        assert watch is not None
        return watch

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def env() -> Env:
    return Env()


async def test_a_burst_polls_each_due_watch_once_and_saves_it(env: Env) -> None:
    """Ten due watches, four workers: one burst polls each once, saves every result, and returns."""
    await env.watch(*JOBS)
    assert await env.scheduler.run_until_idle() == len(JOBS)
    assert env.upstream.polls == dict.fromkeys(JOBS, 1)
    now = env.clock.now()
    for job in JOBS:
        watch = await env.get(job)
        assert (watch.status, watch.polls, watch.lease) == ("active", 1, 0)
        assert watch.next_poll_at == now + POLICY.initial_interval_s
    assert env.sample("watcher_polls_total", outcome="ok") == len(JOBS)
    assert env.sample("watcher_transitions_total", status="active") == len(JOBS)
    assert env.scheduler.inflight == 0


async def test_nothing_is_polled_before_it_is_due(env: Env) -> None:
    """A second burst at the same time polls nothing; once the clock reaches the next poll, all again."""
    await env.watch(*JOBS[:3])
    await env.scheduler.run_until_idle()
    assert await env.scheduler.run_until_idle() == 0
    await env.clock.advance(POLICY.initial_interval_s / 2)
    assert await env.scheduler.run_until_idle() == 0
    assert env.upstream.total == 3
    await env.clock.advance(POLICY.initial_interval_s / 2)
    assert await env.scheduler.run_until_idle() == 3
    assert env.upstream.polls == dict.fromkeys(JOBS[:3], 2)


async def test_intervals_grow_while_the_status_stays(env: Env) -> None:
    """An unchanged status backs off: 1, 2, 4, 8, 8 s (multiplier 2, capped at max_interval_s)."""
    await env.watch(JOBS[0])
    await env.scheduler.run_until_idle()
    gaps = []
    for _ in range(5):
        watch = await env.get(JOBS[0])
        gap = watch.next_poll_at - env.clock.now()
        gaps.append(gap)
        await env.clock.advance(gap)
        assert await env.scheduler.run_until_idle() == 1
    assert gaps == [1.0, 2.0, 4.0, 8.0, 8.0]


async def test_a_terminal_status_finishes_the_watch_with_one_event(env: Env) -> None:
    """active, then failed: two transitions, the second final; the outbox is woken for events routed to a
    webhook, and the finished watch is never polled again."""
    env.upstream.answers(JOBS[0], status("active"), status("failed"))
    await env.watch(JOBS[0])
    await env.scheduler.run_until_idle()
    await env.clock.advance(POLICY.initial_interval_s)
    await env.scheduler.run_until_idle()
    watch = await env.get(JOBS[0])
    assert (watch.final, watch.polls, watch.finished_at) == ("failed", 2, env.clock.now())
    assert [e.type for e in await env.store.events_for(JOBS[0])] == ["job.active", "job.failed"]
    assert [d.webhook for d in await env.store.list_deliveries()] == ["ops", "ops"]
    assert env.woken == 2
    assert env.sample("watcher_jobs_finished_total", status="failed") == 1
    await env.clock.advance(POLICY.max_watch_s * 2)
    assert await env.scheduler.run_until_idle() == 0
    assert env.upstream.total == 2


async def test_upstream_errors_back_off_and_a_404_streak_ends_missing(env: Env) -> None:
    """A 5xx answer keeps the status and backs off; `not_found_limit` 404s in a row end the watch missing."""
    env.upstream.answers(JOBS[0], failure(PollOutcome.SERVER_ERROR), status("active"))
    env.upstream.answers(JOBS[1], failure(PollOutcome.NOT_FOUND))
    await env.watch(JOBS[0], JOBS[1])
    await env.scheduler.run_until_idle()
    erred = await env.get(JOBS[0])
    assert (erred.status, erred.errors, erred.last_error) == (None, 1, "server_error")
    assert erred.next_poll_at > env.clock.now()
    for _ in range(POLICY.not_found_limit * 4):
        if (await env.get(JOBS[1])).final is not None:
            break
        await env.clock.advance(POLICY.max_interval_s)
        await env.scheduler.run_until_idle()
    assert env.upstream.polls[JOBS[1]] == POLICY.not_found_limit
    assert (await env.get(JOBS[1])).final == "missing"
    assert [e.type for e in await env.store.events_for(JOBS[1])] == ["job.missing"]
    assert (await env.get(JOBS[0])).status == "active"
    assert env.sample("watcher_polls_total", outcome="server_error") == 1
    assert env.sample("watcher_polls_total", outcome="not_found") == POLICY.not_found_limit


async def test_a_watch_past_its_deadline_expires_without_a_poll(env: Env) -> None:
    """A watch claimed after `max_watch_s` is decided `expired` without asking the upstream."""
    await env.watch(JOBS[0])
    await env.clock.advance(POLICY.max_watch_s + 1)
    assert await env.scheduler.run_until_idle() == 1
    assert env.upstream.total == 0
    watch = await env.get(JOBS[0])
    assert watch.final == "expired"
    assert [e.type for e in await env.store.events_for(JOBS[0])] == ["job.expired"]


async def test_a_rate_limited_answer_slows_the_bucket_and_retries_after_retry_after(env: Env) -> None:
    """A 429 with Retry-After: the watch is due again no earlier than that, and counted `rate_limited`."""
    env.upstream.answers(JOBS[0], failure(PollOutcome.RATE_LIMITED, retry_after_s=3.0), status("active"))
    await env.watch(JOBS[0])
    await env.scheduler.run_until_idle()
    watch = await env.get(JOBS[0])
    assert watch.next_poll_at >= env.clock.now() + 3.0
    await env.clock.advance(2.0)
    assert await env.scheduler.run_until_idle() == 0
    await env.clock.advance(watch.next_poll_at - env.clock.now())
    assert await env.scheduler.run_until_idle() == 1
    assert (await env.get(JOBS[0])).status == "active"
    assert env.sample("watcher_polls_total", outcome="rate_limited") == 1


async def test_more_due_watches_than_one_claim_are_all_polled_in_one_burst(env: Env) -> None:
    """A hundred due watches: claims of a few at a time, refilled as the workers free up, all polled once."""
    many = [f"00000000-0000-4000-9000-{n:012d}" for n in range(100)]
    await env.watch(*many)
    assert await env.scheduler.run_until_idle() == 100
    assert env.upstream.polls == dict.fromkeys(many, 1)
    assert await env.store.count_due(env.clock.now()) == 0


async def test_a_failed_claim_is_raised_in_burst_mode() -> None:
    """Burst mode does not wait out a store outage: the caller sees it (the loop of `run` waits it out)."""

    class OutStore(MemoryStore):
        async def claim_due(self, now: float, limit: int, lease_s: float) -> list[Watch]:
            raise StoreUnavailable("store: the database is out")

    env = Env(OutStore())
    await env.watch(JOBS[0])
    with pytest.raises(StoreUnavailable):
        await env.scheduler.run_until_idle()
    assert env.upstream.total == 0
