"""Housekeeping: the store-derived gauges refreshed, finished watches purged after their retention.

A loop of the daemon like the others: a store outage is waited out (`StoreHealth`), any other failure is
logged, counted and retried with backoff; stale gauges are never a reason to stop the daemon.
"""

from __future__ import annotations

import asyncio
import random

import structlog

from watcher.clock import Clock, sleep_or_stop
from watcher.errors import StoreUnavailable
from watcher.health import StoreHealth, outage_delay
from watcher.loop import StoreLoop
from watcher.metrics import Metrics
from watcher.store.base import Store

log = structlog.get_logger("watcher.daemon")

# A round never pauses less than this (the default of `min_pause_s`); and never less than ten times what
# the round took, so that the aggregates (not free over a million watches) take at most about a tenth of
# the time.
MIN_PAUSE_S = 1.0


class Housekeeping(StoreLoop):
    """Refreshes the gauges from `Store.counts` and purges finished watches past `retention_s`."""

    name = "housekeeping"

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        health: StoreHealth,
        clock: Clock,
        rng: random.Random,
        *,
        purge_interval_s: float,
        retention_s: float,
        min_pause_s: float = MIN_PAUSE_S,
    ) -> None:
        super().__init__(store, metrics, clock, rng, health)
        self._purge_interval_s = purge_interval_s
        self._retention_s = retention_s
        self._min_pause_s = min_pause_s

    async def _refresh(self, now: float) -> None:
        """The store-derived gauges from one snapshot, fixed while no save that finishes watches is in
        flight, so that the gauges and the counters agree at every scrape (`watcher.metrics`, SPEC §16)."""
        ledger = self._metrics.finishes
        marks: list[int] = []

        def fixed() -> None:
            marks.append(ledger.mark())
            ledger.gate.release()

        await ledger.gate.acquire()
        try:
            counts = await self._store.counts(on_snapshot=fixed)
        finally:
            if not marks:
                ledger.gate.release()
        due = await self._store.count_due(now)
        self._metrics.update_counts(counts, now, due, mark=marks[0] if marks else None)

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh and purge until `stop` is set; the pause between rounds is on the injected clock."""
        store, clock = self._store, self._clock
        last_purge = 0.0
        failures = 0
        while not stop.is_set():
            started = clock.monotonic()
            now = clock.now()
            try:
                await self._refresh(now)
                if now - last_purge >= self._purge_interval_s:
                    purged = await store.purge_finished(now - self._retention_s)
                    if purged:
                        log.info("watches.purged", count=purged)
                    last_purge = now
            except StoreUnavailable as exc:
                await self._health.wait_out(self.name, exc, stop)
                continue
            except Exception as exc:  # stale gauges are no reason to stop the daemon: log, count, go on
                failures += 1
                self._contained()
                log.error("housekeeping.failed", exc_info=exc)
                await sleep_or_stop(clock, outage_delay(failures, self._rng), stop)
                continue
            failures = 0
            self._health.ok(self.name)
            await sleep_or_stop(clock, max(self._min_pause_s, 10 * (clock.monotonic() - started)), stop)
