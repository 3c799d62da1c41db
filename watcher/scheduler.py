"""The one scheduler for every watch: claim due watches, poll them, decide, save in batches.

There is no sleeping task per job. The store's due index says what is due; at most `max_concurrency` polls
are in flight; every poll first takes a token from the shared bucket that 429s slow down. Decisions come from
the pure `watcher.policy.decide`; this module only moves data between the store, the client and the policy.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from watcher.clock import Clock
from watcher.metrics import Metrics
from watcher.models import PollOutcome, PollResult, SavedPoll, Watch
from watcher.policy import Decision, PollingPolicy, decide, is_expired
from watcher.ratelimit import TokenBucket
from watcher.store.base import Store

log = structlog.get_logger("watcher.scheduler")

Route = Callable[[str, Watch], tuple[str, ...]]


class JobFetcher(Protocol):
    """What the scheduler needs from the upstream client."""

    async def get_job(self, job_id: str, workspace: str) -> PollResult:
        """Poll one job and classify the outcome."""
        ...


class ErrorLogLimiter:
    """Logs upstream errors once per burst: an outage must not flood the log.

    Per (workspace, outcome), the first error is logged as `upstream.error`; the next ones within `window_s`
    are only counted. The first one after the window is logged with `suppressed`, the count since the last
    line; when a burst is over (a poll finds its window elapsed), `upstream.error_burst_end` reports what
    was still suppressed, so no count is lost.
    """

    def __init__(self, clock: Clock, window_s: float = 10.0) -> None:
        self._clock = clock
        self._window_s = window_s
        self._since: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def error(self, watch: Watch, result: PollResult) -> None:
        """Record one failed poll, logging it if its kind has not been logged in this window."""
        key = (watch.workspace, result.outcome.value)
        now = self._clock.monotonic()
        start = self._since.get(key)
        if start is not None and now - start < self._window_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        suppressed = self._suppressed.pop(key, 0)
        self._since[key] = now
        log.warning(
            "upstream.error",
            job_id=watch.job_id,
            workspace=watch.workspace,
            reason=result.outcome.value,
            status_code=result.status_code,
            detail=result.detail,
            suppressed=suppressed,
        )

    def settle(self) -> None:
        """Close the bursts whose window has elapsed, logging what they suppressed (cheap when none)."""
        if not self._since:
            return
        now = self._clock.monotonic()
        for key, start in list(self._since.items()):
            if now - start < self._window_s:
                continue
            del self._since[key]
            suppressed = self._suppressed.pop(key, 0)
            if suppressed:
                log.warning(
                    "upstream.error_burst_end",
                    workspace=key[0],
                    reason=key[1],
                    suppressed=suppressed,
                    window_s=self._window_s,
                )


class _BatchWriter:
    """Coalesces the results of concurrent polls into one `save_polls` call (one transaction)."""

    def __init__(self, store: Store, max_batch: int = 512) -> None:
        self._store = store
        self._max_batch = max_batch
        self._pending: list[tuple[SavedPoll, asyncio.Future[bool]]] = []
        self._flushing = False

    async def save(self, item: SavedPoll) -> bool:
        """Queue one result and wait until it is committed; False if its lease was lost."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if not self._flushing:
            self._flushing = True
            try:
                await self._flush()
            finally:
                self._flushing = False
        return await fut

    async def _flush(self) -> None:
        # Whoever starts flushing keeps going until the queue is empty; polls finishing meanwhile ride along
        # in the next batch instead of each opening a transaction of their own.
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            try:
                results = await self._store.save_polls([item for item, _ in batch])
            except BaseException as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                for _, fut in self._pending:
                    if not fut.done():
                        fut.set_exception(exc)
                self._pending = []
                raise
            for (_, fut), ok in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(ok)


class Scheduler:
    """Claims due watches from the store and runs their polls within the concurrency and rate limits."""

    def __init__(
        self,
        store: Store,
        fetcher: JobFetcher,
        policy: PollingPolicy,
        bucket: TokenBucket,
        metrics: Metrics,
        clock: Clock,
        rng: random.Random,
        route: Route,
        *,
        max_concurrency: int,
        lease_s: float = 60.0,
        max_idle_s: float = 1.0,
        on_events: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._fetcher = fetcher
        self._policy = policy
        self._bucket = bucket
        self._metrics = metrics
        self._clock = clock
        self._rng = rng
        self._route = route
        self._max_concurrency = max_concurrency
        self._lease_s = lease_s
        self._max_idle_s = max_idle_s
        self._on_events = on_events
        self._writer = _BatchWriter(store)
        self._errors = ErrorLogLimiter(clock)
        self._inflight: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._failure: BaseException | None = None
        self.polls_started = 0

    @property
    def inflight(self) -> int:
        """Polls claimed and not yet saved."""
        return len(self._inflight)

    def wake(self) -> None:
        """Look for due work now (new registrations, a freed slot)."""
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set, then let in-flight polls finish (the daemon bounds that by its grace)."""
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._raise_failure()
                free = self._max_concurrency - len(self._inflight)
                claimed = 0
                if free > 0:
                    now = self._clock.now()
                    watches = await self._store.claim_due(now, free, self._lease_s)
                    claimed = len(watches)
                    for watch in watches:
                        self._start(watch, now)
                if claimed and claimed == free:
                    await asyncio.sleep(0)  # more may be due: let the polls start, then claim again
                    continue
                await self._idle(stop_wait, free > 0)
            await self.drain()
        finally:
            stop_wait.cancel()

    async def drain(self) -> None:
        """Wait for every in-flight poll to be saved."""
        while self._inflight:
            await asyncio.wait(set(self._inflight))
        self._raise_failure()

    async def _idle(self, stop_wait: asyncio.Future[Any], can_claim: bool) -> None:
        timeout = self._max_idle_s
        if can_claim:
            nxt = await self._store.next_due_at()
            if nxt is not None:
                timeout = min(timeout, max(0.0, nxt - self._clock.now()))
        if timeout <= 0:
            await asyncio.sleep(0)
            return
        self._wakeup.clear()
        waiters: set[asyncio.Future[Any]] = {stop_wait, asyncio.ensure_future(self._wakeup.wait())}
        sleeper = asyncio.ensure_future(self._clock.sleep(timeout))
        waiters.add(sleeper)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                if w is not stop_wait:
                    w.cancel()

    def _start(self, watch: Watch, now: float) -> None:
        if is_expired(watch, now, self._policy):
            task = asyncio.create_task(self._apply(watch, None))
        else:
            task = asyncio.create_task(self._poll(watch))
        self.polls_started += 1
        self._inflight.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()
        self._wakeup.set()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _poll(self, watch: Watch) -> None:
        # Claimed but waiting for a rate-limit token: still part of the `watcher_polls_due` backlog.
        self._metrics.polls_waiting += 1
        try:
            await self._bucket.acquire()
        finally:
            self._metrics.polls_waiting -= 1
        result = await self._fetcher.get_job(watch.job_id, watch.workspace)
        self._metrics.polls.labels(outcome=result.outcome.value).inc()
        self._metrics.poll_duration.observe(result.duration_s)
        if result.outcome is PollOutcome.OK:
            self._bucket.reward()
        elif result.outcome is PollOutcome.RATE_LIMITED:
            self._bucket.penalize(result.retry_after_s)
        if result.outcome not in (PollOutcome.OK, PollOutcome.NOT_FOUND):
            self._errors.error(watch, result)
        self._errors.settle()
        await self._apply(watch, result)

    async def _apply(self, watch: Watch, result: PollResult | None) -> None:
        decision = decide(watch, result, self._clock.now(), self._policy, self._rng, self._route)
        if not await self._writer.save(decision.saved):
            log.info("poll.lease_lost", job_id=watch.job_id, workspace=watch.workspace)
            return
        self._record(decision)

    def _record(self, decision: Decision) -> None:
        watch = decision.saved.watch
        if decision.transition:
            self._metrics.transitions.labels(status=watch.status).inc()
            if decision.detection_lag_s is not None:
                self._metrics.detection_lag.observe(max(0.0, decision.detection_lag_s))
        for new in decision.saved.events:
            log.info(
                "job.transition" if decision.transition else "job.verdict",
                job_id=watch.job_id,
                workspace=watch.workspace,
                status=watch.final or watch.status,
                previous_status=decision.previous_status,
                event_id=new.event.id,
                type=new.event.type,
                webhooks=list(new.webhooks),
                reason=new.event.payload["data"].get("reason"),
            )
        if decision.final is not None:
            self._metrics.jobs_finished.labels(status=decision.final.value).inc()
            log.info(
                "job.finished",
                job_id=watch.job_id,
                workspace=watch.workspace,
                status=decision.final.value,
                polls=watch.polls,
            )
        # Only events routed to a webhook made deliveries: waking the outbox for the others (most first
        # observations) would cost it two queries per poll for nothing.
        if self._on_events is not None and any(new.webhooks for new in decision.saved.events):
            self._on_events()
