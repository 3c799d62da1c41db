"""Prometheus metrics of SPEC §8 on an injectable `CollectorRegistry` (each test builds a fresh one).

No label ever carries an unbounded value: statuses and outcomes are enums, webhooks come from the config (plus
the names of removed webhooks that still have deliveries in the store). The gauges that describe the store
(queue depth, backlog, dead deliveries) are read from `Store.counts()` snapshots, so they are exact after a
restart; counters live in the process and start again at 0, which `rate()` and `increase()` handle.

A scrape is consistent per process (SPEC §16): once `watcher_jobs_finished_total` counts a job,
`watcher_watched_jobs` no longer does, although the snapshot may be seconds old. `FinishLedger` keeps the
jobs this process finished since the snapshot was fixed, and the gauge leaves them out. Which finishes the
snapshot saw is exact, not a guess from timestamps: the scheduler saves and counts a batch that finishes
watches while holding `FinishLedger.gate`, and housekeeping holds the same gate until the store has fixed
its read snapshot (`Store.counts(on_snapshot=...)`), so every finish is counted either before the snapshot
(and seen by it) or after (and left out by the ledger).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import time
from collections.abc import Callable, Sequence

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from watcher import __version__
from watcher.models import DeliveryOutcome, FinalState, JobStatus, PollOutcome
from watcher.statuses import OTHER_LABEL, UNFINISHED_STATUSES, metric_label
from watcher.store.base import StoreCounts
from watcher.store.faults import StoreFault

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
_GROUP_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)
# The `status` labels of `watcher_watched_jobs`: every grown status is `other` (SPEC §2), a label never
# carries what the upstream made up.
WATCH_STATUSES: tuple[str, ...] = (*UNFINISHED_STATUSES, OTHER_LABEL)
# The loops that contain their items' failures: the `loop` label of `watcher_internal_errors_total`.
LOOPS: tuple[str, ...] = ("scheduler", "delivery", "watchlist", "housekeeping")


class _StoreGauges(Collector):
    """Gauges computed at scrape time from the last `StoreCounts` snapshot and the live scheduler state."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> list[Metric]:
        m = self._m
        ready = GaugeMetricFamily(
            "watcher_ready",
            "1 when the daemon is ready (store open and available, every loop running), else 0.",
        )
        ready.add_metric([], 1.0 if m.ready() else 0.0)
        counts = m.counts
        if counts is None:
            # Before the first snapshot the store's figures are unknown: no sample beats a wrong 0.
            return [ready]
        watched = GaugeMetricFamily(
            "watcher_watched_jobs",
            "Watched, unfinished jobs by last known status (the queue depth).",
            labels=["status"],
        )
        by_status = dict.fromkeys(WATCH_STATUSES, 0)
        for status, n in counts.watched_by_status.items():
            label = metric_label(status)
            by_status[label] = by_status.get(label, 0) + n
        for status, n in m.finishes.unseen().items():  # finished and counted since the snapshot
            label = metric_label(status)
            by_status[label] = max(0, by_status.get(label, 0) - n)
        for status, n in sorted(by_status.items()):
            watched.add_metric([status], n)
        pending = GaugeMetricFamily(
            "watcher_webhook_pending",
            "Deliveries neither delivered nor dead yet, by webhook.",
            labels=["webhook"],
        )
        dead = GaugeMetricFamily(
            "watcher_webhook_dead", "Dead deliveries kept for replay, by webhook.", labels=["webhook"]
        )
        names = sorted({*m.webhooks, *counts.pending_by_webhook, *counts.dead_by_webhook})
        for name in names:
            pending.add_metric([name], counts.pending_by_webhook.get(name, 0))
            dead.add_metric([name], counts.dead_by_webhook.get(name, 0))
        oldest = GaugeMetricFamily(
            "watcher_outbox_oldest_age_seconds", "Age of the oldest undelivered event (0 when none)."
        )
        age = 0.0
        if counts.oldest_pending_created_at is not None:
            # Measured now, not when the snapshot was taken, so a stuck backlog never looks younger.
            age = max(0.0, m.now() - counts.oldest_pending_created_at)
        oldest.add_metric([], age)
        due = GaugeMetricFamily(
            "watcher_polls_due", "Polls whose time has come but that have not started (scheduler backlog)."
        )
        due.add_metric([], m.polls_due + m.polls_waiting())
        quarantined = GaugeMetricFamily(
            "watcher_watches_quarantined",
            "Unfinished watches in quarantine: their handling kept failing; never polled until released.",
        )
        quarantined.add_metric([], counts.quarantined)
        return [ready, watched, pending, dead, oldest, due, quarantined]


class FinishLedger:
    """The jobs this process finished (and counted) since the store snapshot behind the gauges was fixed,
    by the status the snapshot counted them under (see the module docstring)."""

    def __init__(self) -> None:
        self.gate = asyncio.Lock()  # a save that finishes watches, or a snapshot being fixed
        self._seq = 0
        self._log: collections.deque[tuple[int, str]] = collections.deque()

    def finished(self, previous_status: str | None) -> None:
        """One job finished and counted; the store had it under `previous_status` (None: never polled)."""
        self._seq += 1
        self._log.append((self._seq, previous_status or "unknown"))

    def mark(self) -> int:
        """Where the ledger stands: call it once a snapshot is fixed, and give it to `published`."""
        return self._seq

    def published(self, mark: int) -> None:
        """The snapshot fixed at `mark` is the one the gauges show: the finishes before it are in it."""
        while self._log and self._log[0][0] <= mark:
            self._log.popleft()

    def unseen(self) -> collections.Counter[str]:
        """Finished jobs the published snapshot still counts as watched, by their status in it."""
        return collections.Counter(status for _, status in self._log)


class _LoopGauges(Collector):
    """`watcher_event_loop_tasks`: asyncio tasks alive in the event loop that serves the scrape.

    A count that only grows is a leak (a task per request or per reload never finished); the soak benchmark
    watches it. Collected on the loop's own thread, since `/metrics` is served there; without a running loop
    (a registry read from another thread) the sample is left out rather than guessed.
    """

    def collect(self) -> list[Metric]:
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # no running event loop in this thread
            return []
        family = GaugeMetricFamily(
            "watcher_event_loop_tasks", "asyncio tasks alive in the daemon's event loop (a leak grows it)."
        )
        family.add_metric([], tasks)
        return [family]


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """`histogram.observe(v)` for every value, counted into the buckets first and added once per bucket.

    The scheduler observes every poll's duration, a few thousand a second: one locked increment per bucket
    and batch instead of two per value. It reaches into prometheus_client's histogram (`_upper_bounds`,
    `_buckets`, `_sum`, stable since 0.4); should they change, it falls back to `observe`, and a test
    compares the two expositions.
    """
    if not values:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for v in values:
            histogram.observe(v)
        return
    counts = [0] * len(bounds)
    find = bisect.bisect_left  # the first bucket whose bound is >= the value, as `observe` picks it
    for v in values:
        counts[find(bounds, v)] += 1
    for bucket, n in zip(buckets, counts, strict=True):
        if n:
            bucket.inc(n)
    total.inc(sum(values))


def _register_default_collectors(registry: CollectorRegistry) -> None:
    """The client's process, platform and GC metrics, once per registry (the global one has them)."""
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        # Already registered: the default REGISTRY, or a registry shared by two Metrics.
        with contextlib.suppress(ValueError):
            registry.register(collector)


class Metrics:
    """Every metric the daemon exports; store-derived gauges are refreshed by `update_counts`.

    `now` is the wall clock used for ages at scrape time; `ready` says whether the daemon is ready
    (`watcher_ready`). `polls_waiting` counts claimed polls not started yet (queued for a worker or waiting
    for a rate-limit token): with the store's due-but-unclaimed count it makes `watcher_polls_due`, the
    scheduler backlog. All three are read at scrape time.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        webhooks: tuple[str, ...] = (),
        *,
        now: Callable[[], float] = time.time,
        ready: Callable[[], bool] = lambda: False,
        polls_waiting: Callable[[], int] = lambda: 0,
        default_collectors: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.webhooks = webhooks
        self.now = now
        self.ready = ready
        self.counts: StoreCounts | None = None
        self.counts_at = 0.0
        self.finishes = FinishLedger()
        self.polls_due = 0
        self.polls_waiting = polls_waiting
        # The client's `*_created` series would appear as `watcher_polls_created` and the like, which reads
        # as a count of created polls; Prometheus does not need them. The switch is process-wide.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # the client leaves it unannotated
        r = self.registry
        self.polls = Counter("watcher_polls", "Upstream polls by outcome.", ["outcome"], registry=r)
        for outcome in PollOutcome:
            self.polls.labels(outcome=outcome.value)
        # Labelled by the configured workspaces (`watcher.polling.buckets.Buckets` sets one per workspace).
        self.upstream_throttled = Gauge(
            "watcher_upstream_throttled",
            "1 while 429s keep a workspace's rate limit below its configured rate, else 0.",
            ["workspace"],
            registry=r,
        )
        self.poll_duration = Histogram(
            "watcher_poll_duration_seconds",
            "Duration of upstream polls.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.jobs_finished = Counter(
            "watcher_jobs_finished",
            "Jobs that stopped being watched, by final status.",
            ["status"],
            registry=r,
        )
        for final in (*FinalState, OTHER_LABEL):
            self.jobs_finished.labels(status=final)
        self.jobs_slow = Counter(
            "watcher_jobs_slow",
            "Jobs that ran past their type's slow_quantile duration (job.slow, SPEC §12), once per watch.",
            registry=r,
        )
        self.transitions = Counter(
            "watcher_transitions", "Observed status transitions by new status.", ["status"], registry=r
        )
        for status in (*JobStatus, OTHER_LABEL):
            self.transitions.labels(status=status)
        self.deliveries = Counter(
            "watcher_webhook_deliveries",
            "Delivery attempts by webhook and outcome.",
            ["webhook", "outcome"],
            registry=r,
        )
        self.delivery_duration = Histogram(
            "watcher_webhook_delivery_duration_seconds",
            "Duration of webhook delivery attempts.",
            ["webhook"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.group_members = Histogram(
            "watcher_webhook_group_members",
            "Members (events) of each grouped message sent (group_window_s), by webhook.",
            ["webhook"],
            buckets=_GROUP_BUCKETS,
            registry=r,
        )
        self.endpoint_open = Gauge(
            "watcher_webhook_endpoint_open",
            "Endpoints whose circuit breaker is open or half-open (callbacks: how many callback endpoints).",
            ["webhook"],
            registry=r,
        )
        self.track_webhooks(webhooks)
        lag = "Detection time minus the upstream updatedAt of a transition."
        self.detection_lag = Histogram("watcher_detection_lag_seconds", lag, buckets=_LAG_BUCKETS, registry=r)
        notify = "First successful delivery minus detection time."
        self.notify_lag = Histogram("watcher_notify_lag_seconds", notify, buckets=_LAG_BUCKETS, registry=r)
        self.watchlist_errors = Counter(
            "watcher_watchlist_reload_errors",
            "Watch-list reloads that failed and kept the last good list.",
            registry=r,
        )
        self.loop_errors = Counter(
            "watcher_internal_errors",
            "Unexpected errors caught and survived by a daemon loop.",
            ["loop"],
            registry=r,
        )
        for loop in LOOPS:
            self.loop_errors.labels(loop=loop)
        self.store_errors = Counter(
            "watcher_store_errors",
            "Failed store calls by kind: an outage (unreachable, disk_full, read_only, locked, io_error,"
            " cannot_open) or one failed request.",
            ["kind"],
            registry=r,
        )
        for fault in StoreFault:
            self.store_errors.labels(kind=fault.value)
        self.api_requests = Counter(
            "watcher_api_requests",
            "API requests by client (a name of api.clients, `token` for api.tokens, `anonymous`), route"
            " template (`unmatched` for unknown paths) and status code.",
            ["client", "route", "code"],
            registry=r,
        )
        self.config_reloads = Counter(
            "watcher_config_reloads",
            "Configuration reloads (SIGHUP) by result: ok, or failed (the running configuration is kept).",
            ["result"],
            registry=r,
        )
        for result in ("ok", "failed"):
            self.config_reloads.labels(result=result)
        self.config_last_reload_ok = Gauge(
            "watcher_config_last_reload_successful",
            "1 if the last configuration reload succeeded (or none was asked for since start-up), else 0.",
            registry=r,
        )
        self.config_last_reload_ok.set(1)
        self.config_loaded_at = Gauge(
            "watcher_config_last_reload_success_timestamp_seconds",
            "When the running configuration was loaded: the start-up, or the last successful reload.",
            registry=r,
        )
        self.config_loaded_at.set(now())
        Info("watcher_build", "Build information.", registry=r).info({"version": __version__})
        r.register(_StoreGauges(self))
        r.register(_LoopGauges())
        if default_collectors:
            _register_default_collectors(r)

    def track_webhooks(self, webhooks: tuple[str, ...]) -> None:
        """The configured webhooks (at start-up, and after a reload): their series exist from now on.

        The series of a removed webhook stay (a counter must not go back); its gauges follow the store.
        """
        self.webhooks = webhooks
        for name in webhooks:
            for result in DeliveryOutcome:
                self.deliveries.labels(webhook=name, outcome=result)
            self.delivery_duration.labels(webhook=name)
            self.endpoint_open.labels(webhook=name)

    def config_reloaded(self, ok: bool, now: float) -> None:
        """Count one configuration reload; a successful one is the running configuration from `now`."""
        self.config_reloads.labels(result="ok" if ok else "failed").inc()
        self.config_last_reload_ok.set(1 if ok else 0)
        if ok:
            self.config_loaded_at.set(now)

    def job_finished(self, final: str, previous_status: str | None) -> None:
        """Count a job that stopped being watched (`final`, as `metric_label` names it); call it as soon as
        the store has committed the finish, while holding `finishes.gate`."""
        self.jobs_finished.labels(status=final).inc()
        self.finishes.finished(previous_status)

    def update_counts(
        self, counts: StoreCounts, now: float, polls_due: int | None = None, *, mark: int | None = None
    ) -> None:
        """Refresh the store-derived gauges from a snapshot taken at `now`, fixed at the ledger's `mark`
        (`FinishLedger.mark`; None: the ledger as it is now, for callers that finish nothing meanwhile)."""
        self.finishes.published(self.finishes.mark() if mark is None else mark)
        self.counts = counts
        self.counts_at = now
        if polls_due is not None:
            self.polls_due = polls_due
