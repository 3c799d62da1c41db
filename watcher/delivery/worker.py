"""The delivery worker: it drains the outbox (SPEC §6).

It claims due deliveries from the store, sends each in its own task through `WebhookSender`, and records
the outcome the pure retry policy decides (`watcher.delivery.retry.next_update`). The store is only touched
before and after a send, so no transaction is ever open while an HTTP request is in flight. Per (job,
webhook) ordering is the store's job: it only hands out the oldest pending delivery of each pair.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

import structlog

from watcher.clock import Clock
from watcher.containment import as_store_error, describe, safe_line
from watcher.delivery.breaker import Admission, BreakerPolicy, Breakers
from watcher.delivery.callbacks import CallbackTargets
from watcher.delivery.expiry import SWEEP_S, expire_old, too_old
from watcher.delivery.grouped import claim_groups, grouped, split
from watcher.delivery.outcomes import record_outcome
from watcher.delivery.retry import next_update
from watcher.delivery.slots import EndpointSlots
from watcher.delivery.target import WebhookTarget
from watcher.delivery.webhook import SendResult
from watcher.errors import StoreUnavailable
from watcher.health import StoreHealth
from watcher.loop import StoreLoop
from watcher.metrics import Metrics
from watcher.models import CALLBACK, DeadReason, Delivery, DeliveryOutcome, DeliveryState, DeliveryUpdate
from watcher.store.base import Store

log = structlog.get_logger("watcher.delivery")

NOT_CONFIGURED = "webhook not configured"  # the `last_error` of a delivery dead for `NOT_CONFIGURED`
# When due deliveries exist but none could be claimed (they wait behind an earlier one of the same pair),
# re-check with a growing pause instead of spinning; reset as soon as a claim returns something.
_BLOCKED_PAUSE_MIN_S = 0.005
# Smaller claims cost the single-webhook latency bench's p99 (more claim round trips per burst).
_CLAIM_PER_BUDGET = 4


class Sender(Protocol):
    """What the worker needs from the transport (`WebhookSender`): one attempt, classified."""

    async def send(self, target: WebhookTarget, delivery: Delivery) -> SendResult:
        """POST `delivery` to `target` once; never retries by itself."""
        ...


class DeliveryWorker(StoreLoop):
    """Sends due deliveries with bounded concurrency until stopped; wake it when new events are saved."""

    name = "delivery"

    def __init__(
        self,
        store: Store,
        sender: Sender,
        targets: Mapping[str, WebhookTarget],
        metrics: Metrics,
        clock: Clock,
        rng: random.Random,
        *,
        concurrency: int = 16,
        lease_s: float = 60.0,
        max_idle_s: float = 1.0,
        health: StoreHealth | None = None,
        callbacks: CallbackTargets | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        super().__init__(store, metrics, clock, rng, health)
        self._sender = sender
        self._targets: dict[str, WebhookTarget] = {}
        self._callbacks = callbacks  # None: callbacks are off, a callback delivery is dead (not configured)
        self._concurrency = concurrency
        self._lease_s = lease_s
        self._max_idle_s = max_idle_s
        self._stop: asyncio.Event | None = None
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._blocked_pause = 0.0
        self._breakers = breakers  # None: no circuit breakers (tests of the plain retry rules)
        # Deliveries in flight per endpoint, and claimed ones waiting for a slot of their endpoint.
        self._slots: EndpointSlots[tuple[Delivery, WebhookTarget, Sender]] = EndpointSlots()
        self._claim_max = 1  # the largest claim (see `_claim_and_start`), set by `_use`
        self._use(targets)
        self._stopping = False
        self._swept_at: float | None = None  # monotonic time of the last `max_delivery_age_s` sweep
        # Webhooks that send one message per window (SPEC §15): claimed by `claim_groups`, never one by one.
        self._grouped = grouped(self._targets.values())
        self._grouped_names = {t.name for t in self._grouped}

    def wake(self) -> None:
        """Look for new deliveries at once (called by the scheduler after it saved events)."""
        self._wake.set()

    def reconfigure(self, targets: Mapping[str, WebhookTarget]) -> None:
        """Deliver to `targets` from now on (a configuration reload), in one step on the loop.

        Sends in flight finish with the target they started with; every later attempt, a retry or a
        delivery still waiting for a slot included, uses the new one (a changed secret signs it). The
        deliveries of a removed webhook become dead (`not_configured`) when they come due, as after a
        restart; they are kept for replay.
        """
        self._use(targets)
        if self._breakers is not None:
            self._breakers.track((*self._targets, *((CALLBACK,) if self._callbacks is not None else ())))
        self._swept_at = None  # the `max_delivery_age_s` of new or changed targets applies at the next claim
        self._wake.set()

    def _use(self, targets: Mapping[str, WebhookTarget]) -> None:
        self._targets = dict(targets)
        budgets = [t.concurrency for t in self._targets.values()]
        if self._callbacks is not None:
            budgets.append(self._callbacks.template.concurrency)
        self._claim_max = max([1, *budgets])

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, claim what is due one last time, wait for in-flight sends, return.

        A store outage (`StoreUnavailable`) is waited out with backoff, claims and recording alike; any other
        failure is contained: a claim that fails keeps the daemon not-ready and is retried with backoff, a
        failure around one delivery stays with that delivery (SPEC §16).
        If this coroutine is cancelled, in-flight sends are cancelled too and their deliveries stay leased
        in the store, to be retried once the lease runs out or after a restart.
        """
        self._stop = stop
        try:
            while not stop.is_set():
                try:
                    _, delay_s = await self._claim_and_start()
                except StoreUnavailable as exc:
                    await self._health.wait_out(self.name, exc, stop)
                    continue
                except Exception as exc:  # e.g. a row that cannot be read back: not ready, never dead
                    self._contained()
                    log.error("delivery.claim_failed", exc_info=exc)
                    await self._health.wait_out(self.name, as_store_error(exc), stop)
                    continue
                await self._wait(stop, delay_s)
                self._reap()
            # One last claim: events saved by polls that finished during the daemon's drain go out now.
            try:
                await self._claim_and_start()
            except StoreUnavailable as exc:
                log.warning("delivery.final_claim_failed", reason=str(exc))
            while self._in_flight:
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                self._reap()
        finally:
            await self._cancel_in_flight()

    async def run_until_idle(self) -> int:
        """Burst mode: send every delivery due now, record each outcome, and return how many were claimed.

        The loop of `run` without its waiting: a retry that is due later waits for the next call. For tests
        and tools that move the clock themselves. A failed claim is raised, not waited out; recording an
        outcome waits out an outage as in `run`, on the injected clock.
        """
        total = 0
        try:
            while True:
                claimed, _ = await self._claim_and_start()
                total += claimed
                if not self._in_flight:
                    if claimed:
                        continue  # all of them were finished at once (unconfigured): more may be due
                    return total
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                self._reap()
        finally:
            await self._cancel_in_flight()

    async def _claim_and_start(self) -> tuple[int, float | None]:
        """Claim what fits and start sending it; return how many were claimed and how long to wait then
        (None: until something happens)."""
        room = self._concurrency - len(self._in_flight)
        if room <= 0:
            return 0, None  # only a finished send (or stop) can let more in
        # Cleared before claiming so a wake() that lands during the claim is not lost.
        self._wake.clear()
        now = self._clock.now()
        await self._sweep(now)
        # A claim takes at most four times the largest endpoint budget (16 by default, the default global
        # concurrency): what does not fit its endpoint's free slots waits for them here, never more than
        # one claim's worth per endpoint, since an endpoint at its budget is left out of the next claims.
        room = min(room, _CLAIM_PER_BUDGET * self._claim_max)
        exclude = self._slots.excluded()
        if self._breakers is not None:
            await self._breakers.refresh()
            exclude |= self._breakers.excluded(now)
        skip = exclude | self._grouped_names
        if skip:
            claimed = await self._store.claim_deliveries(now, room, self._lease_s, skip)
        else:
            claimed = await self._store.claim_deliveries(now, room, self._lease_s)
        closes = None
        if self._grouped:
            left = room - len(claimed)
            groups, closes = await claim_groups(self._store, self._grouped, exclude, now, self._lease_s, left)
            claimed += groups
        self._health.ok(self.name)
        for delivery in claimed:
            await self._start(delivery, now)
        delay = await self._delay(len(claimed), room, now)
        if closes is not None:  # a grouped webhook's window closes then
            delay = max(0.0, closes - now) if delay is None else min(delay, max(0.0, closes - now))
        return len(claimed), delay

    async def _delay(self, claimed: int, room: int, now: float) -> float | None:
        """How long to wait after a claim of `claimed` in `room` (None: until something happens)."""
        if claimed >= room:
            return None if len(self._in_flight) >= self._concurrency else 0.0
        nxt = await self._store.next_delivery_at()
        if nxt is None:
            return self._max_idle_s
        if nxt > now:
            self._blocked_pause = 0.0
            return min(nxt - now, self._max_idle_s)
        if claimed:
            self._blocked_pause = 0.0
            return 0.0
        # Due rows exist but none were claimable: they wait behind a leased or retrying head of their pair.
        self._blocked_pause = min(self._max_idle_s, max(_BLOCKED_PAUSE_MIN_S, self._blocked_pause * 2))
        return self._blocked_pause

    async def _start(self, delivery: Delivery, now: float) -> None:
        """Start sending one claimed delivery, or settle it: dead (gone, blocked, too old) or given back
        (its endpoint is open, or its endpoint's slots are all taken)."""
        sender = self._sender
        target: WebhookTarget | str | None = self._targets.get(delivery.webhook)
        if delivery.webhook == CALLBACK and self._callbacks is not None:
            target, sender = self._callbacks.target_for(delivery), self._callbacks.sender
        if target is None:
            await self._finish_dead(delivery, now, DeadReason.NOT_CONFIGURED, NOT_CONFIGURED)
            return
        if isinstance(target, str):
            await self._finish_dead(delivery, now, DeadReason.BLOCKED_ADDRESS, target)
            return
        if delivery.group:  # a grouped message: its members too old are dead, the others go
            fresh, old = split(delivery, lambda m: now - m.created_at <= target.max_delivery_age_s)
            if old is not None:
                await self._finish_dead(old, now, DeadReason.MAX_AGE, too_old(target))
            if fresh is None:
                return
            delivery = fresh
        elif now - delivery.created_at > target.max_delivery_age_s:
            await self._finish_dead(delivery, now, DeadReason.MAX_AGE, too_old(target))
            return
        endpoint = delivery.endpoint
        if self._slots.full(endpoint, target.concurrency):
            self._slots.wait(endpoint, (delivery, target, sender), now)
            return
        self._slots.take(endpoint)
        self._launch(delivery, target, sender, None)

    def _launch(
        self, delivery: Delivery, target: WebhookTarget, sender: Sender, claimed: float | None
    ) -> None:
        """Send in a task of its own, in a slot of its endpoint already taken; the next waiting delivery of
        that endpoint takes the slot over when it ends. `claimed`: when a delivery that waited for its
        slot was claimed (None: it did not wait)."""
        endpoint = delivery.endpoint
        task = asyncio.create_task(
            self._admit_and_deliver(delivery, target, sender, claimed), name=f"delivery-{delivery.id}"
        )
        task.add_done_callback(lambda _: self._slot_freed(endpoint))
        self._in_flight.add(task)

    def _slot_freed(self, endpoint: str) -> None:
        nxt = self._slots.done(endpoint)
        if nxt is not None and not self._stopping:
            self._launch(*nxt.item, nxt.claimed_at)

    async def _admit_and_deliver(
        self, delivery: Delivery, target: WebhookTarget, sender: Sender, claimed: float | None
    ) -> None:
        """Send unless the endpoint's breaker says wait, or the claim's lease would end during the send."""
        now = self._clock.now()
        if delivery.webhook != CALLBACK:  # a reload may have changed or removed it while this one waited
            current = self._targets.get(delivery.webhook)
            if current is None:
                await self._finish_dead(delivery, now, DeadReason.NOT_CONFIGURED, NOT_CONFIGURED)
                return
            target = current
        if claimed is not None and now + target.timeout_s >= claimed + self._lease_s:
            await self._give_back(delivery, now)  # it waited too long for a slot: claim it again later
            return
        admission = Admission.SEND
        if self._breakers is not None:
            admission = await self._breakers.admit(delivery, now)
        if admission is Admission.WAIT:
            await self._give_back(delivery, now)
            return
        await self._deliver(delivery, target, sender, admission is Admission.PROBE)

    async def _give_back(self, delivery: Delivery, now: float) -> None:
        """End a claim without an attempt: the delivery is due again at once, attempts unchanged (claims
        leave its endpoint out while it is open or busy)."""
        update = DeliveryUpdate(DeliveryState.PENDING, delivery.attempts, now, delivery.last_error)
        await self._finish(delivery, update)

    async def _sweep(self, now: float) -> None:
        """Every `_SWEEP_S`: deliveries older than their target's `max_delivery_age_s` that no claim will
        reach soon (their endpoint is open) are made dead in bulk (`max_age`)."""
        mono = self._clock.monotonic()
        if self._swept_at is not None and mono - self._swept_at < SWEEP_S:
            return
        self._swept_at = mono
        targets = list(self._targets.values())
        if self._callbacks is not None:
            targets.append(self._callbacks.template)
        await expire_old(self._store, targets, now, self._metrics)

    async def _wait(self, stop: asyncio.Event, delay_s: float | None) -> None:
        """Sleep until the earliest of stop, wake(), a finished send, or `delay_s` on the injected clock."""
        if delay_s is not None and delay_s <= 0:
            await asyncio.sleep(0)
            return
        helpers: list[asyncio.Task[Any]] = [
            asyncio.create_task(stop.wait()),
            asyncio.create_task(self._wake.wait()),
        ]
        if delay_s is not None:
            helpers.append(asyncio.create_task(self._clock.sleep(delay_s)))
        try:
            await asyncio.wait([*helpers, *self._in_flight], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    def _reap(self) -> None:
        """Forget finished sends; one that raised (a bug around one delivery) is logged and counted, and
        its delivery stays leased, to go out again after its lease: the worker goes on (SPEC §16)."""
        done = [t for t in self._in_flight if t.done()]
        for task in done:
            self._in_flight.discard(task)
            exc = None if task.cancelled() else task.exception()
            if exc is not None:
                self._contained()
                log.error("delivery.task_failed", task=task.get_name(), exc_info=exc)

    async def _cancel_in_flight(self) -> None:
        self._stopping = True  # deliveries still waiting for a slot stay leased, to go out after a restart
        self._slots.drop_waiting()
        for task in self._in_flight:
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        self._in_flight.clear()

    async def _deliver(
        self, delivery: Delivery, target: WebhookTarget, sender: Sender, probe: bool = False
    ) -> None:
        """One attempt: send, decide, record. Store errors escape; send errors become a retry.

        A probe of an open endpoint spends no attempt: it is delivered, or waits for the next probe.
        """
        start = self._clock.monotonic()
        try:
            result = await sender.send(target, delivery)
        except Exception as exc:  # a bug in the sender must fail one attempt, not the worker
            log.exception("delivery.send_crashed", webhook=target.name, event_id=delivery.event.id)
            detail = f"internal error: {type(exc).__name__}"
            result = SendResult(DeliveryOutcome.RETRY, None, None, detail, self._clock.monotonic() - start)
        now = self._clock.now()
        update = next_update(delivery, result, now, target, self._rng)
        if probe and result.kind is DeliveryOutcome.RETRY:
            # It waits for the next probe with its attempts unspent (claims skip the open endpoint).
            update = DeliveryUpdate(DeliveryState.PENDING, delivery.attempts, now, update.last_error)
        elif probe and result.kind is DeliveryOutcome.SUCCESS:
            update = replace(update, attempts=delivery.attempts)
        if self._breakers is not None:
            try:
                await self._breakers.record(delivery, result, probe, BreakerPolicy.of(target), now)
            except Exception as exc:  # the attempt's own outcome still counts; the breaker catches up
                log.warning("breaker.record_failed", webhook=target.name, error=describe(exc))
        kept = await self._finish(delivery, update)
        if kept is not None:
            record_outcome(self._metrics, delivery, update, result, now, kept)

    async def _finish(self, delivery: Delivery, update: DeliveryUpdate) -> bool | None:
        """Record an attempt; None if it could not be recorded.

        A store outage is waited out (the attempt happened, so its outcome is worth the wait) unless the
        worker stops first. A record the store refuses for its data is tried once more with a plain-ASCII
        reason, the likeliest culprit (it quotes the receiver), then given up. Unrecorded, the delivery
        stays leased and goes out again (same id) after its lease or a restart: never lost, and the worker
        goes on (SPEC §16).
        """
        sanitised = False
        while True:
            try:
                if delivery.group:  # one outcome for every member of a grouped message
                    kept = await self._store.finish_group(delivery.group, update) > 0
                else:
                    kept = await self._store.finish_delivery(delivery, update)
            except StoreUnavailable as exc:
                if self._stop is not None and self._stop.is_set():
                    log.warning(
                        "delivery.outcome_not_saved",
                        event_id=delivery.event.id,
                        webhook=delivery.webhook,
                        reason=str(exc),
                    )
                    return None
                await self._health.wait_out(self.name, exc, self._stop)
                continue
            except Exception as exc:  # this record's own failure, not the store being out
                self._contained()
                if sanitised:
                    log.error("delivery.not_recorded", delivery_id=delivery.id, error=describe(exc))
                    return None
                log.error(
                    "delivery.handling_failed",
                    delivery_id=delivery.id,
                    event_id=delivery.event.id,
                    exc_info=exc,
                )
                reason = None if update.last_error is None else safe_line(update.last_error)
                update = replace(update, last_error=reason)
                sanitised = True
                continue
            self._health.ok(self.name)
            return kept

    async def _finish_dead(self, delivery: Delivery, now: float, reason: DeadReason, detail: str) -> None:
        """A delivery dead without an attempt: its webhook is gone, or its callback URL is refused."""
        update = DeliveryUpdate(DeliveryState.DEAD, delivery.attempts, now, detail, dead_reason=reason)
        kept = await self._finish(delivery, update)
        if kept is None:
            return
        result = SendResult(DeliveryOutcome.DEAD, None, None, detail, 0.0, reason)
        record_outcome(self._metrics, delivery, update, result, now, kept, sent=False)
