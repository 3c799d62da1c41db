"""Circuit breakers per endpoint (SPEC §13): the pure rules, and `Breakers`, which keeps them in the store.

An endpoint is a configured webhook, or a callback URL's `scheme://host:port`. After `breaker_failures`
consecutive failed attempts it opens for `breaker_open_s`: its deliveries are not even claimed, so they wait
without spending attempts. When the period ends one delivery is the probe: a real attempt that spends none.
A success closes the endpoint; a failure opens it again for twice as long, up to `breaker_open_max_s`.
Retryable failures (5xx, 408, 429, timeouts, connection errors) count; permanent ones (410,
`blocked_address`) neither count nor reset the count.

The state lives in the store: claims leave out the deliveries of an endpoint the store has open, so a
restart or another replica respects an open breaker at once, and the probe is taken with a compare-and-set,
so two workers never send one at the same time. Each worker re-reads every breaker at least once a second
(`REFRESH_S`) for its own decisions, and keeps what it wrote itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum

import structlog

from watcher.clock import Clock
from watcher.delivery.target import WebhookTarget
from watcher.delivery.webhook import SendResult
from watcher.metrics import Metrics
from watcher.models import BreakerState, Delivery, DeliveryOutcome, EndpointHealth
from watcher.store.base import Store

log = structlog.get_logger("watcher.delivery")

REFRESH_S = 1.0  # how stale a worker's view of the other workers' breakers may be
_CAS_TRIES = 5
_MAX_ERROR = 200


class Admission(StrEnum):
    """What a claimed delivery may do now."""

    SEND = "send"  # the endpoint is closed: an ordinary attempt
    PROBE = "probe"  # this delivery is the open endpoint's one probe (spends no attempt)
    WAIT = "wait"  # the endpoint is open, or another worker's probe is out: give the claim back


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """The breaker keys of one target (`[[webhooks]]` or `[callbacks]`)."""

    failures: int = 5
    open_s: float = 10.0
    open_max_s: float = 300.0

    @classmethod
    def of(cls, target: WebhookTarget) -> BreakerPolicy:
        """A target's breaker keys."""
        return cls(target.breaker_failures, target.breaker_open_s, target.breaker_open_max_s)


def take_probe(h: EndpointHealth, now: float, lease_s: float) -> EndpointHealth | None:
    """The endpoint with its probe taken (half-open until `now + lease_s`), or None if none may go now.

    A probe whose worker died is taken over once its lease has run out.
    """
    if h.state is BreakerState.CLOSED or h.open_until is None or h.open_until > now:
        return None
    return replace(h, state=BreakerState.HALF_OPEN, open_until=now + lease_s)


def after_attempt(
    h: EndpointHealth, result: SendResult, probe: bool, policy: BreakerPolicy, now: float
) -> EndpointHealth:
    """The endpoint after one attempt to it with `result` (`probe`: it was the open endpoint's probe)."""
    if result.kind is DeliveryOutcome.SUCCESS or (probe and result.kind is DeliveryOutcome.DEAD):
        # A 2xx, or a probe the receiver answered for good (410): it is reachable again.
        return replace(h, state=BreakerState.CLOSED, consecutive_failures=0, open_until=None, open_s=None)
    if result.kind is DeliveryOutcome.DEAD:
        return h  # permanent failures (410, blocked_address) neither count nor reset
    failures = h.consecutive_failures + 1
    error = result.detail[:_MAX_ERROR]
    if probe:
        open_s = min(policy.open_max_s, 2 * (h.open_s or policy.open_s))
        return replace(
            h, state=BreakerState.OPEN, consecutive_failures=failures, open_until=now + open_s,
            open_s=open_s, last_error=error,
        )  # fmt: skip
    if h.state is BreakerState.CLOSED and failures >= policy.failures:
        return replace(
            h, state=BreakerState.OPEN, consecutive_failures=failures, open_until=now + policy.open_s,
            open_s=policy.open_s, last_error=error,
        )  # fmt: skip
    # Still closed, or an attempt that was already out when the endpoint opened: counted, nothing more.
    return replace(h, consecutive_failures=failures, last_error=error)


class Breakers:
    """Every endpoint's breaker as this worker sees it, read from and written to the store."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        metrics: Metrics,
        *,
        probe_lease_s: float,
        webhooks: Iterable[str] = (),
    ) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._probe_lease_s = probe_lease_s
        self._webhooks = tuple(webhooks)  # gauge labels that exist even with every breaker closed
        self._cache: dict[str, EndpointHealth] = {}
        self._read_at: float | None = None

    def track(self, webhooks: Iterable[str]) -> None:
        """The configured webhooks after a reload: each has a gauge sample, a removed one keeps its own
        while the store still has its breaker."""
        self._webhooks = tuple(webhooks)
        self._update_gauge()

    def get(self, endpoint: str) -> EndpointHealth | None:
        """The breaker of `endpoint` as last seen (None: never failed)."""
        return self._cache.get(endpoint)

    async def refresh(self, *, force: bool = False) -> None:
        """Re-read every breaker if the last read is older than `REFRESH_S` (or `force`)."""
        mono = self._clock.monotonic()
        if not force and self._read_at is not None and mono - self._read_at < REFRESH_S:
            return
        self._cache = {h.endpoint: h for h in await self._store.endpoints()}
        self._read_at = mono
        self._update_gauge()

    def excluded(self, now: float) -> set[str]:
        """Endpoints whose deliveries must not be claimed now: open, or with a probe out."""
        return {
            e
            for e, h in self._cache.items()
            if h.state is not BreakerState.CLOSED and h.open_until is not None and h.open_until > now
        }

    async def admit(self, delivery: Delivery, now: float) -> Admission:
        """Whether a claimed delivery goes out, as an ordinary attempt or as the probe, or waits."""
        h = self._cache.get(delivery.endpoint)
        if h is None or h.state is BreakerState.CLOSED:
            return Admission.SEND
        probe = take_probe(h, now, self._probe_lease_s)
        if probe is None:
            return Admission.WAIT
        if await self._store.put_endpoint(probe):
            self._cache[probe.endpoint] = replace(probe, version=probe.version + 1)
            self._update_gauge()
            return Admission.PROBE
        await self.refresh(force=True)  # another worker moved first: it has the probe
        return Admission.WAIT

    async def record(
        self, delivery: Delivery, result: SendResult, probe: bool, policy: BreakerPolicy, now: float
    ) -> EndpointHealth | None:
        """Apply one attempt's result to its endpoint's breaker; None if it could not be written."""
        endpoint = delivery.endpoint
        for _ in range(_CAS_TRIES):
            h = self._cache.get(endpoint) or EndpointHealth(endpoint, delivery.webhook)
            new = after_attempt(h, result, probe, policy, now)
            if new == h:
                return h
            if await self._store.put_endpoint(new):
                stored = replace(new, version=new.version + 1)
                self._cache[endpoint] = stored
                if new.state is not h.state:
                    self._log_change(stored, h.state)
                    self._update_gauge()
                return stored
            await self.refresh(force=True)
        log.warning("breaker.not_recorded", webhook=delivery.webhook, endpoint=endpoint)
        return None

    def _log_change(self, h: EndpointHealth, before: BreakerState) -> None:
        fields = {"webhook": h.webhook, "endpoint": h.endpoint, "previous": before.value}
        if h.state is BreakerState.OPEN:
            until = None if h.open_until is None else round(h.open_until - self._clock.now(), 3)
            log.warning(
                "breaker.open",
                failures=h.consecutive_failures,
                open_for_s=until,
                reason=h.last_error,
                **fields,
            )
        elif h.state is BreakerState.CLOSED:
            log.info("breaker.closed", **fields)

    def _update_gauge(self) -> None:
        open_by: dict[str, int] = dict.fromkeys(self._webhooks, 0)
        for h in self._cache.values():
            open_by.setdefault(h.webhook, 0)
            open_by[h.webhook] += h.state is not BreakerState.CLOSED
        for webhook, n in open_by.items():
            self._metrics.endpoint_open.labels(webhook=webhook).set(n)
