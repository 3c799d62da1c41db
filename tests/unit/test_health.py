"""The store-health object the loops report outages into, and the backoff they wait with."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from tests.support.eventually import eventually
from watcher.devtools.clock import ManualClock
from watcher.errors import StoreError, StoreUnavailable
from watcher.health import OUTAGE_BACKOFF_MAX_S, OUTAGE_JITTER, StoreHealth, outage_delay
from watcher.metrics import Metrics
from watcher.store.faults import StoreFault, StoreOutage


class TestOutageDelay:
    """Capped exponential backoff with jitter."""

    @given(st.integers(1, 10_000), st.integers(0, 2**32), st.floats(0.001, 10.0), st.floats(0.01, 600.0))
    def test_within_bounds(self, attempt: int, seed: int, initial: float, cap: float) -> None:
        """Each delay is in [(1 - jitter) * nominal, nominal]; nominal doubles from `initial` up to `cap`."""
        nominal = min(cap, initial * 2.0 ** min(attempt - 1, 64))
        d = outage_delay(attempt, random.Random(seed), initial, cap)
        assert (1 - OUTAGE_JITTER) * nominal * (1 - 1e-9) <= d <= nominal * (1 + 1e-9)
        assert d <= cap * (1 + 1e-9)

    def test_grows_then_stays_capped_and_jitter_spreads(self) -> None:
        """The nominal delay grows with the attempts up to the cap; replicas with other seeds differ."""
        rng = random.Random(1)
        firsts = [outage_delay(1, random.Random(s)) for s in range(50)]
        late = [outage_delay(40, rng) for _ in range(50)]
        assert max(firsts) < min(late)
        assert all(OUTAGE_BACKOFF_MAX_S * (1 - OUTAGE_JITTER) <= d <= OUTAGE_BACKOFF_MAX_S for d in late)
        assert len({round(d, 6) for d in firsts}) > 40


def _health() -> tuple[StoreHealth, ManualClock, Metrics]:
    clock = ManualClock()
    metrics = Metrics(CollectorRegistry(), default_collectors=False)
    return StoreHealth(clock, random.Random(3), metrics), clock, metrics


def _errors(metrics: Metrics, kind: str) -> float:
    value = metrics.registry.get_sample_value("watcher_store_errors_total", {"kind": kind})
    return 0.0 if value is None else value


class TestStoreHealth:
    """One outage, however many loops see it: logged once at each end, not ready until all recovered."""

    def test_one_outage_seen_by_two_loops(self) -> None:
        """Two loops fail: one store.unavailable; available again only once both have a call that works,
        then one store.recovered with the duration; every failed call is counted by kind."""
        health, clock, metrics = _health()
        full = StoreOutage("store w.db: database or disk is full (SQLITE_FULL)", StoreFault.DISK_FULL)
        with capture_logs() as logs:
            health.unavailable("scheduler.save", full)
            health.unavailable("delivery", full)
            health.unavailable("scheduler.save", full)
            assert not health.available
            described = health.describe()
            assert described is not None and described["kind"] == "disk_full"
            assert described["loops"] == ["delivery", "scheduler.save"]
            health.ok("scheduler.save")
            assert not health.available
            health.ok("housekeeping")  # never failed: changes nothing
            asyncio.run(clock.advance(7.5))
            health.ok("delivery")
        assert health.available and health.describe() is None
        events = [e["event"] for e in logs]
        assert events == ["store.unavailable", "store.recovered"]
        assert logs[0]["reason"] == str(full) and logs[0]["kind"] == "disk_full"
        assert logs[1]["duration_s"] == 7.5 and logs[1]["failed_calls"] == 3
        assert _errors(metrics, "disk_full") == 3

    def test_plain_store_errors_are_counted_as_requests(self) -> None:
        """A StoreError that is not an outage counts as kind `request`; an unclassified StoreUnavailable
        as `unreachable`."""
        health, _, metrics = _health()
        health.count(StoreError("invalid input syntax for type json"))
        health.unavailable("scheduler", StoreUnavailable("connection refused"))
        assert _errors(metrics, "request") == 1 and _errors(metrics, "unreachable") == 1

    def test_backoff_grows_per_loop_and_resets_after_ok(self) -> None:
        """Each loop's delays grow with its own consecutive failures and start over after a success."""
        health, _, _ = _health()
        down = StoreUnavailable("down")
        delays = [health.unavailable("scheduler", down) for _ in range(8)]
        assert delays[-1] > delays[0] * 8
        assert health.unavailable("delivery", down) < delays[-1]
        health.ok("scheduler")
        assert health.unavailable("scheduler", down) < delays[-1]

    async def test_wait_out_returns_early_on_stop(self) -> None:
        """A loop waiting out an outage wakes up at once when the daemon stops."""
        health, clock, _ = _health()
        stop = asyncio.Event()
        for _ in range(10):  # a long backoff
            health.unavailable("scheduler", StoreUnavailable("down"))
        waiting = asyncio.create_task(health.wait_out("scheduler", StoreUnavailable("down"), stop))
        await eventually(lambda: clock.sleepers == 1, 10, "the backoff waiting for the clock")
        assert not waiting.done()
        stop.set()
        await asyncio.wait_for(waiting, 1.0)
