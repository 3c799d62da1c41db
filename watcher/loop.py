"""What every background loop of the daemon shares: the store it works on, the metrics it counts in, its
clock and randomness, and the store health it reports to, all under its name.

A loop never dies of what it reads or of an outage (SPEC §16): a `StoreUnavailable` is waited out and its
end reported (`self._health.wait_out(self.name, …)`, `ok`), anything else it contains is counted in
`watcher_internal_errors_total{loop=name}` (`_contained`) and the loop goes on.
"""

from __future__ import annotations

import random
from typing import ClassVar

from watcher.clock import Clock
from watcher.health import StoreHealth
from watcher.metrics import Metrics
from watcher.store.base import Store


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
