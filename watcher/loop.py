"""What every background loop of the daemon shares: the store it works on, the metrics it counts in, its
clock and randomness, and the store health it reports to, all under its name.

A loop never dies of what it reads or of an outage (SPEC §16): a `StoreUnavailable` is waited out and its
end reported (`self._health.wait_out(self.name, …)`, `ok`), anything else it contains is counted in
`watcher_internal_errors_total{loop=name}` (`_contained`) and the loop goes on.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import ClassVar

import structlog

from watcher.clock import Clock, sleep_or_stop
from watcher.errors import StoreUnavailable
from watcher.health import StoreHealth, outage_delay
from watcher.metrics import Metrics
from watcher.store.base import Store

log = structlog.get_logger("watcher.daemon")


class StoreLoop:
    """The base of the scheduler, the delivery worker, the watch-list reloader and housekeeping."""

    name: ClassVar[str]  # the `loop` label of its errors, and the key it reports store health under

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        clock: Clock,
        rng: random.Random | None = None,
        health: StoreHealth | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._health = health or StoreHealth(clock, self._rng)

    def _contained(self) -> None:
        """Count one failure that this loop contained and went on from."""
        self._metrics.loop_errors.labels(loop=self.name).inc()

    async def run_rounds(
        self, stop: asyncio.Event, one_round: Callable[[], Awaitable[None]], pause: Callable[[float], float]
    ) -> None:
        """Run `one_round` until `stop` is set, `pause(seconds the round took)` apart on the injected clock.

        An outage is waited out and the round tried again; any other failure is logged as
        `<name>.failed` with its traceback, counted, and the round tried again after a backoff.
        """
        clock = self._clock
        failures = 0
        while not stop.is_set():
            started = clock.monotonic()
            try:
                await one_round()
            except StoreUnavailable as exc:
                await self._health.wait_out(self.name, exc, stop)
                continue
            except Exception as exc:  # what one round met is no reason to stop the daemon
                failures += 1
                self._contained()
                log.error(f"{self.name}.failed", exc_info=exc)
                await sleep_or_stop(clock, outage_delay(failures, self._rng), stop)
                continue
            failures = 0
            self._health.ok(self.name)
            await sleep_or_stop(clock, pause(clock.monotonic() - started), stop)
