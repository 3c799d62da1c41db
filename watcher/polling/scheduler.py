"""The one scheduler for every watch: claim due watches, poll them, decide, save in batches.

There is no sleeping task per job. The store's due index says what is due; at most `max_concurrency` polls
are in flight; every poll first takes a token from its workspace's bucket and from the upstream's, which
429s slow down (`watcher.polling.buckets`). Decisions come
from the pure `watcher.polling.policy.decide`; this module only moves data between the store, the client and
the policy.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from watcher.clock import Clock
from watcher.containment import as_store_error
from watcher.errors import StoreUnavailable
from watcher.health import StoreHealth
from watcher.loop import StoreLoop
from watcher.metrics import Metrics, observe_many
from watcher.models import PollOutcome, PollResult, Watch
from watcher.polling.buckets import Buckets
from watcher.polling.errorlog import ErrorLogLimiter
from watcher.polling.failures import FailureNotes
from watcher.polling.learning import Learner
from watcher.polling.policy import Decision, PollingPolicy, decide, is_expired, postpone
from watcher.polling.record import record_decision
from watcher.polling.writer import BatchWriter, WriterEvents
from watcher.store.base import Store

log = structlog.get_logger("watcher.scheduler")

Route = Callable[[str, Watch], tuple[str, ...]]


class JobFetcher(Protocol):
    """What the scheduler needs from the upstream client."""

    async def get_job(self, job_id: str, workspace: str) -> PollResult:
        """Poll one job and classify the outcome."""
        ...


# Below saturation, claims are at least this far apart (see `Scheduler._idle`): polls due within it are
# claimed and sent together, so the fixed costs around a claim, a save and the loop's wake-ups are shared
# by a burst of polls instead of paid by each. A poll starts at most this much after it is due. A wider
# window costs less CPU per poll but sends detections, and so deliveries, in bigger bursts: 100 ms met
# SPEC §9's 1.5x CPU ratio but raised the p99 from detection to receipt from 26 to 59-84 ms (target
# < 50 ms), 50 ms to 44 ms (notes of issue 18). So the window is wide only while polls find nothing new.
CLAIM_WINDOW_S = 0.02  # while polls find changes: detections, and so deliveries, go out steadily
QUIET_CLAIM_WINDOW_S = 0.1  # while no poll has found a change for QUIET_AFTER_S: nothing waits on a burst
QUIET_AFTER_S = 1.0


class Scheduler(StoreLoop):
    """Claims due watches from the store and runs their polls within the concurrency and rate limits.

    `max_concurrency` worker coroutines take claimed watches from a local queue, one poll at a time each.
    The queue is refilled with one `claim_due` call per batch, and the poll results go back to the store
    in batches through `BatchWriter`: neither a claim nor a save costs a store round trip per poll.
    """

    name = "scheduler"

    def __init__(
        self,
        store: Store,
        fetcher: JobFetcher,
        policy: PollingPolicy,
        buckets: Buckets,
        metrics: Metrics,
        clock: Clock,
        rng: random.Random,
        route: Route,
        *,
        max_concurrency: int,
        lease_s: float = 60.0,
        max_idle_s: float = 1.0,
        claim_window_s: float = CLAIM_WINDOW_S,
        quiet_claim_window_s: float = QUIET_CLAIM_WINDOW_S,
        on_events: Callable[[], None] | None = None,
        health: StoreHealth | None = None,
        learner: Learner | None = None,
    ) -> None:
        super().__init__(store, metrics, clock, rng, health)
        self.learner = learner  # adaptive polling (SPEC §12): learns durations, paces polls, job.slow
        self._fetcher = fetcher
        self._policy = policy
        self._buckets = buckets
        self._route = route
        self._max_concurrency = max_concurrency
        # Claimed ahead of the workers, so a worker that finishes finds its next watch without a store trip.
        self._prefetch = max(1, max_concurrency // 2)
        self._lease_s = lease_s
        self._max_idle_s = max_idle_s
        self._claim_window_s = claim_window_s
        self._quiet_claim_window_s = max(claim_window_s, quiet_claim_window_s)
        self._claimed_at = -claim_window_s  # monotonic time of the last claim
        self._changed_at = clock.monotonic()  # the last saved poll that found a change (start-up counts)
        self._claim_was_full = False  # it found all it wanted: more may be due (saturation)
        self._on_events = on_events
        self._failures = FailureNotes(
            store, policy, clock, rng, contained=self._contained, noted=self._look_again
        )
        saving = f"{self.name}.save"
        self._writer = BatchWriter(
            store,
            WriterEvents(
                saved=self._saved,
                failed=self._store_failed,
                item_failed=self._item_failed,
                wait_out=lambda exc: self._health.wait_out(saving, exc),
                recovered=lambda: self._health.ok(saving),
            ),
            finish_gate=metrics.finishes.gate,
        )
        # Results waiting for the store beyond this stop further claims: a stalled store stalls polling.
        self._max_unsaved = 4 * max_concurrency + 512
        self._errors = ErrorLogLimiter(clock)
        self._ready: deque[Watch] = deque()
        self._idle_workers: deque[asyncio.Future[Watch | None]] = deque()
        self._busy = 0
        self._waiting_tokens = 0
        self._stopping = False
        self._halt = asyncio.Event()  # set with `_stopping`, for workers waiting out a store outage
        self._wakeup = asyncio.Event()  # anything below, or a worker free: look again
        # What may make a watch due sooner than the store said: a wake() (a registration, a release), a
        # batch saved, a failure written, a loop's failure. Below saturation only these cut a wait short.
        self._nudge = asyncio.Event()
        self._failure: BaseException | None = None
        self._poll_counters = {o: metrics.polls.labels(outcome=o.value) for o in PollOutcome}
        # Polls by outcome and their durations since the last batch: `watcher_polls_total` is incremented
        # once per batch, not once per poll (the counter takes a lock each time), and the duration histogram
        # with it, so the two always agree; both run at most one batch behind.
        self._poll_counts = dict.fromkeys(PollOutcome, 0)
        self._durations: list[float] = []
        self.polls_started = 0

    @property
    def inflight(self) -> int:
        """Polls started and not yet saved."""
        return self._busy + self._writer.unsaved

    def wake(self) -> None:
        """Look for due work now (new registrations, a released watch)."""
        self._look_again()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set, then let started polls finish and be saved (the daemon bounds that)."""
        await self._run(stop, until_idle=False)

    async def run_until_idle(self) -> int:
        """Burst mode: poll every watch due now, save the results, and return how many polls were started.

        The loop of `run` without its waiting: what a poll makes due again at once (an error backoff of
        zero, say) is polled in the same burst; what is due later waits for the next call. For tests and
        tools that move the clock themselves. A failed claim is raised, not waited out; a save that finds
        the store out waits as in `run`, on the injected clock.
        """
        before = self.polls_started
        await self._run(asyncio.Event(), until_idle=True)
        return self.polls_started - before

    async def _run(self, stop: asyncio.Event, *, until_idle: bool) -> None:
        self._stopping = False
        self._halt.clear()
        stop_wait = asyncio.ensure_future(stop.wait())
        workers = [asyncio.create_task(self._worker(), name=f"poll{i}") for i in range(self._max_concurrency)]
        for w in workers:
            w.add_done_callback(self._worker_done)
        try:
            while not stop.is_set():
                self._raise_failure()
                want = self._want()
                claimed = 0
                try:
                    if want > 0:
                        claimed = await self._claim(want)
                    if claimed and claimed == want:
                        await asyncio.sleep(0)  # more may be due: let the workers start, then look again
                        continue
                    if until_idle:
                        if await self._idle_now(claimed):
                            break
                        continue
                    await self._idle(stop_wait, want > 0)
                except Exception as exc:
                    if until_idle:
                        raise  # burst mode: its caller sees store errors, none is waited out
                    if isinstance(exc, StoreUnavailable):
                        await self._health.wait_out(self.name, exc, stop)
                        continue
                    # e.g. a row that cannot be read back: not ready, never dead
                    self._contained()
                    log.error("scheduler.claim_failed", exc_info=exc)
                    await self._health.wait_out(self.name, as_store_error(exc), stop)
            await self._stop(workers)
        finally:
            if not until_idle:
                self._writer.cancel()
            stop_wait.cancel()
            for w in workers:
                w.cancel()
            self._count_polls()

    async def _claim(self, want: int) -> int:
        """Claim up to `want` due watches and hand them to the workers; how many there were."""
        watches = await self._store.claim_due(self._clock.now(), want, self._lease_s)
        self._claimed_at = self._clock.monotonic()
        self._claim_was_full = len(watches) == want
        self._health.ok(self.name)
        for watch in watches:
            self._hand_out(watch)
        return len(watches)

    async def _idle_now(self, claimed: int) -> bool:
        """In burst mode, after a claim that found less than it wanted: True once nothing is due now and
        every started poll is saved; otherwise wait for the workers or the writer to move on."""
        if claimed:
            await asyncio.sleep(0)  # let the workers start on what was handed out
            return False
        if self._busy or self._ready or self._waiting_tokens:
            self._wakeup.clear()
            await self._wakeup.wait()  # a worker that goes idle, or a saved batch, sets it
            return False
        if self._writer.unsaved or self._failures.pending:
            await self.drain()  # saved watches may be due again at once: look once more
            return False
        return True

    async def drain(self) -> None:
        """Wait for every started poll to be saved (or its failure noted)."""
        await self._writer.drained()
        await self._failures.drained()
        self._raise_failure()

    def _want(self) -> int:
        """How many watches to claim: enough for the free workers and the prefetch, if the queue is low.

        None while saves wait out a store outage: a poll whose result cannot be saved is a wasted poll.
        """
        if (
            len(self._ready) > self._prefetch // 2
            or self._writer.unsaved >= self._max_unsaved
            or self._writer.stalled
        ):
            return 0
        # Waiting for rate-limit tokens already: claiming ahead would only age the claims.
        ahead = 0 if self._waiting_tokens else self._prefetch
        return max(0, self._max_concurrency + ahead - self._busy - len(self._ready))

    def _hand_out(self, watch: Watch) -> None:
        while self._idle_workers:
            fut = self._idle_workers.popleft()
            if not fut.done():
                fut.set_result(watch)
                return
        self._ready.append(watch)

    def polls_waiting(self) -> int:
        """Polls claimed but not started (queued, or waiting for a rate-limit token): part of
        `watcher_polls_due`, the backlog."""
        return len(self._ready) + self._waiting_tokens

    async def _stop(self, workers: list[asyncio.Task[None]]) -> None:
        """No new polls: release the watches claimed ahead, let the workers finish, save what they found."""
        self._stopping = True
        self._halt.set()
        while self._idle_workers:
            fut = self._idle_workers.popleft()
            if not fut.done():
                fut.set_result(None)
        unpolled = list(self._ready)
        self._ready.clear()
        if unpolled:
            try:
                await self._store.release(unpolled)
            except StoreUnavailable as exc:
                # Their claims run out by themselves after lease_s; nothing is lost.
                log.warning("scheduler.release_failed", watches=len(unpolled), reason=str(exc))
        await asyncio.wait(workers)
        await self.drain()

    async def _worker(self) -> None:
        ready = self._ready
        while not self._stopping:
            if self._writer.stalled:
                await self._writer.wait_healthy(self._halt)  # poll nothing that could not be saved
                continue
            if ready:
                watch = ready.popleft()
                if len(ready) <= self._prefetch // 2:
                    self._wakeup.set()
            else:
                fut: asyncio.Future[Watch | None] = asyncio.get_running_loop().create_future()
                self._idle_workers.append(fut)
                self._wakeup.set()
                got = await fut
                if got is None:
                    return
                watch = got
            self._busy += 1
            try:
                now = self._clock.now()
                if is_expired(watch, now, self._policy):
                    self.polls_started += 1
                    self._writer.add(decide(watch, None, now, self._policy, self._rng, self._route))
                else:
                    await self._poll(watch)
            except Exception as exc:  # one watch's bug or poison must not end the worker (SPEC §16)
                self._item_failed(watch, exc)
            finally:
                self._busy -= 1
            if self._writer.unsaved >= self._max_unsaved:
                await self._writer.drained()  # the store is behind: wait for it instead of piling up

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()
        self._look_again()

    def _item_failed(self, item: Watch | Decision, exc: BaseException) -> None:
        """One watch's handling raised: `FailureNotes` counts it against the watch (SPEC §16)."""
        self._failures.failed(item.saved.watch if isinstance(item, Decision) else item, exc)

    def _look_again(self) -> None:
        self._nudge.set()
        self._wakeup.set()

    def _store_failed(self, exc: BaseException) -> None:
        self._count_polls()  # they were made, whether or not their results could be stored
        if self._failure is None:
            self._failure = exc
        self._look_again()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _idle(self, stop_wait: asyncio.Future[Any], can_claim: bool) -> None:
        """Wait until the next watch is due, a wake-up, or `max_idle_s`.

        Below saturation claims are batched by time: the next claim comes no sooner than `claim_window_s`
        after the last one, and a worker going idle does not cut that wait short (a `wake()`, a saved batch
        or a stop do). At a steady 500 polls/s that is one claim, one wait and one wake-up per window
        for about ten polls instead of two loop rounds per poll, and the polls of a window go out
        together; a poll starts at most `claim_window_s` after it is due. Once no saved poll has found a
        change for `QUIET_AFTER_S`, the window is `quiet_claim_window_s`: bigger bursts cost less per poll,
        and with no detections there are no deliveries to bunch; the first change found narrows it again.
        """
        timeout = self._max_idle_s
        calm = can_claim and not self._claim_was_full
        if can_claim:
            nxt = await self._store.next_due_at()
            if nxt is not None:
                timeout = min(timeout, max(0.0, nxt - self._clock.now()))
            if calm:
                mono = self._clock.monotonic()
                window = self._claim_window_s
                if mono - self._changed_at >= QUIET_AFTER_S:
                    window = self._quiet_claim_window_s
                timeout = max(timeout, window - (mono - self._claimed_at))
        if timeout <= 0:
            await asyncio.sleep(0)
            return
        event = self._nudge if calm else self._wakeup
        if event.is_set():
            self._wakeup.clear()
            self._nudge.clear()
            return
        waiters: set[asyncio.Future[Any]] = {stop_wait, asyncio.ensure_future(event.wait())}
        sleeper = asyncio.ensure_future(self._clock.sleep(timeout))
        waiters.add(sleeper)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._wakeup.clear()
            self._nudge.clear()
            for w in waiters:
                if w is not stop_wait:
                    w.cancel()

    async def _poll(self, watch: Watch) -> None:
        buckets, workspace = self._buckets, watch.workspace
        back_at = buckets.take(workspace, watch.job_id)
        if back_at is not None:
            # Its workspace is throttled: due again when its bucket has a token for it, and this worker
            # goes on with other workspaces' polls instead of waiting (no head-of-line blocking).
            self._writer.add(postpone(watch, self._clock.now() + back_at - self._clock.monotonic()))
            return
        self.polls_started += 1
        upstream = buckets.upstream
        if not upstream.try_acquire():  # the upstream's limit binds every workspace alike: wait for it
            self._waiting_tokens += 1
            try:
                await upstream.acquire()
            finally:
                self._waiting_tokens -= 1
        result = await self._fetcher.get_job(watch.job_id, workspace)
        outcome = result.outcome
        self._poll_counts[outcome] += 1
        self._durations.append(result.duration_s)
        if outcome is PollOutcome.OK:
            buckets.reward(workspace)
        elif outcome is not PollOutcome.NOT_FOUND:  # a 404 is an answer, not an upstream error
            if outcome is PollOutcome.RATE_LIMITED:
                buckets.penalize(workspace, result.retry_after_s)
            self._errors.error(watch, result)
        self._errors.settle()
        now, learner = self._clock.now(), self.learner
        pace = learner.pace if learner is not None else None
        decision = decide(watch, result, now, self._policy, self._rng, self._route, pace)
        if learner is not None:
            learner.after_poll(decision, result.body, now)
        self._writer.add(decision)

    def _count_polls(self) -> None:
        durations, self._durations = self._durations, []
        observe_many(self._metrics.poll_duration, durations)
        counts = self._poll_counts
        for outcome, n in counts.items():
            if n:
                self._poll_counters[outcome].inc(n)
                counts[outcome] = 0

    def _saved(self, batch: list[Decision], results: list[bool]) -> None:
        self._count_polls()
        for decision, ok in zip(batch, results, strict=True):
            if ok:
                # Most polls change nothing and have nothing to record.
                if decision.saved.events or decision.transition or decision.final is not None:
                    self._changed_at = self._clock.monotonic()
                    try:
                        record_decision(decision, self._metrics, self._on_events)
                    except Exception:  # saved already: a failing log line or metric must not stop the writer
                        self._contained()
                        log.exception("scheduler.record_failed", job_id=decision.saved.watch.job_id)
            else:
                watch = decision.saved.watch
                log.info("poll.lease_lost", job_id=watch.job_id, workspace=watch.workspace)
        self._look_again()  # saved watches may be due again, and the writer has room again
