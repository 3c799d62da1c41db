"""Store health: the loops report store outages here; `/readyz` and `watcher_ready` read it (SPEC §16).

A loop that gets `StoreUnavailable` calls `wait_out`, which records the outage and sleeps a capped, jittered
backoff; after its next store call that works it calls `ok`. The store is available when no loop has an
outage outstanding: a loop whose reads still work while its writes fail (a full disk) keeps the daemon
not-ready, since it reports `ok` only after a call that did fail before works again. The outage is logged
once when it starts (`store.unavailable`) and once when it ends (`store.recovered`), whatever the number of
loops and retries in between; each failed call is counted in `watcher_store_errors_total` by kind.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from watcher.clock import Clock, SystemClock, sleep_or_stop
from watcher.errors import StoreError
from watcher.store.faults import StoreFault, fault_of

if TYPE_CHECKING:
    from watcher.metrics import Metrics

log = structlog.get_logger("watcher.health")

OUTAGE_BACKOFF_INITIAL_S = 0.1
OUTAGE_BACKOFF_MAX_S = 5.0
OUTAGE_JITTER = 0.5  # a delay is drawn from [1 - jitter, 1] x the nominal one: replicas do not retry in step
_MAX_REASON = 300


def outage_delay(
    attempt: int,
    rng: random.Random,
    initial_s: float = OUTAGE_BACKOFF_INITIAL_S,
    max_s: float = OUTAGE_BACKOFF_MAX_S,
) -> float:
    """Seconds to wait before retry number `attempt` (1-based): doubling from `initial_s`, capped, jittered.

    The result lies in `[(1 - OUTAGE_JITTER) * nominal, nominal]` with `nominal = min(max_s, initial_s *
    2**(attempt-1))`, so it never exceeds `max_s`.
    """
    nominal = min(max_s, initial_s * 2.0 ** min(max(0, attempt - 1), 64))
    return nominal * rng.uniform(1.0 - OUTAGE_JITTER, 1.0)


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (its type when empty), bounded."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:_MAX_REASON]


@dataclass(frozen=True, slots=True)
class Outage:
    """The store outage in progress: why, which kind, since when (monotonic), and which loops see it."""

    reason: str
    fault: StoreFault
    since: float
    loops: tuple[str, ...]


class StoreHealth:
    """Whether the store is reachable, as the daemon's loops see it; shared by all of them."""

    def __init__(
        self, clock: Clock | None = None, rng: random.Random | None = None, metrics: Metrics | None = None
    ) -> None:
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._metrics = metrics
        self._failing: dict[str, int] = {}  # loop -> consecutive failed attempts
        self._reason = ""
        self._fault = StoreFault.UNREACHABLE
        self._since = 0.0
        self._errors = 0  # failed calls during the current outage

    @property
    def available(self) -> bool:
        """False while any loop has a store outage outstanding."""
        return not self._failing

    def outage(self) -> Outage | None:
        """The outage in progress, or None."""
        if not self._failing:
            return None
        return Outage(self._reason, self._fault, self._since, tuple(sorted(self._failing)))

    def describe(self) -> dict[str, Any] | None:
        """The outage for `/readyz`: reason, kind and duration so far; None when the store is available."""
        out = self.outage()
        if out is None:
            return None
        return {
            "reason": out.reason,
            "kind": out.fault.value,
            "for_s": round(self._clock.monotonic() - out.since, 1),
            "loops": list(out.loops),
        }

    def count(self, exc: StoreError) -> None:
        """Count one failed store call in `watcher_store_errors_total` by its kind (any StoreError)."""
        if self._metrics is not None:
            self._metrics.store_errors.labels(kind=fault_of(exc).value).inc()

    def unavailable(self, loop: str, exc: StoreError) -> float:
        """Record that `loop` found the store out; returns how long it should wait before trying again."""
        self.count(exc)
        fault = fault_of(exc)
        self._reason = one_line(exc)
        self._fault = fault
        if not self._failing:
            self._since = self._clock.monotonic()
            self._errors = 0
            log.error("store.unavailable", reason=self._reason, kind=fault.value, loop=loop)
        self._errors += 1
        attempt = self._failing.get(loop, 0) + 1
        self._failing[loop] = attempt
        return outage_delay(attempt, self._rng)

    def ok(self, loop: str) -> None:
        """`loop` used the store successfully; the outage ends when no loop is failing any more."""
        if loop not in self._failing:
            return
        del self._failing[loop]
        if not self._failing:
            log.info(
                "store.recovered",
                duration_s=round(self._clock.monotonic() - self._since, 3),
                reason=self._reason,
                kind=self._fault.value,
                failed_calls=self._errors,
            )

    async def wait_out(self, loop: str, exc: StoreError, stop: asyncio.Event | None = None) -> None:
        """Record the outage `loop` hit and sleep its backoff, returning early once `stop` is set."""
        await sleep_or_stop(self._clock, self.unavailable(loop, exc), stop)
