"""Housekeeping: the store-derived gauges refreshed, finished watches purged after their retention.

A loop of the daemon like the others: a store outage is waited out (`StoreHealth`), any other failure is
logged, counted and retried with backoff; stale gauges are never a reason to stop the daemon.
"""

from __future__ import annotations

import asyncio
import random

import structlog

from watcher.clock import Clock
from watcher.health import StoreHealth
from watcher.loop import StoreLoop
from watcher.metrics import Metrics
from watcher.store.base import Store

log = structlog.get_logger("watcher.daemon")

# A round never pauses less than this (the default of `min_pause_s`).
MIN_PAUSE_S = 1.0
# The aggregates are not free over a million watches (a scan of the watch table), and they are paid every
# round whether or not polls are due, so they set the idle CPU and, at a steady rate, a share of the CPU
# per poll. A round pauses fifty times as long as it took (the recount costs about 2 % of a core), unless
# that would leave the gauges staler than MAX_STALE_S; and never less than ten times (at most ~10 %).
ROUND_BUDGET = 0.02
MAX_STALE_S = 30.0


def pause_after(took: float, min_pause_s: float = MIN_PAUSE_S) -> float:
    """How long housekeeping waits after a round that took `took` seconds."""
    return max(min_pause_s, 10 * took, min(took / ROUND_BUDGET, MAX_STALE_S))


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
        self._last_purge = 0.0

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
        """Refresh and purge until `stop` is set; the pause between rounds is on the injected clock.

        Stale gauges are no reason to stop the daemon: a failed round is logged (`housekeeping.failed`),
        counted and tried again.
        """
        await self.run_rounds(stop, self._round, lambda took: pause_after(took, self._min_pause_s))

    async def _round(self) -> None:
        now = self._clock.now()
        await self._refresh(now)
        if now - self._last_purge >= self._purge_interval_s:
            purged = await self._store.purge_finished(now - self._retention_s)
            if purged:
                log.info("watches.purged", count=purged)
            self._last_purge = now
