"""The metric set of SPEC §8 (names, types, labels, bounded label values) and the shipped dashboard and
alert rules referring only to metrics that exist. Pure: a fresh registry per test, a fake clock."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import yaml
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import Metric

from tests.observability.conftest import ALERTS, DASHBOARD, parse_metrics, value
from watcher.devtools.clock import ManualClock
from watcher.metrics import Metrics, observe_many
from watcher.models import FinalState, JobStatus, PollOutcome
from watcher.polling.buckets import Buckets
from watcher.store.base import StoreCounts
from watcher.store.faults import StoreFault

# SPEC §8: family name -> (type, label names).
SPEC = {
    "watcher_watched_jobs": ("gauge", set()),  # label `status`, checked on samples
    "watcher_polls_due": ("gauge", set()),
    "watcher_polls": ("counter", {"outcome"}),
    "watcher_poll_duration_seconds": ("histogram", set()),
    "watcher_jobs_finished": ("counter", {"status"}),
    "watcher_transitions": ("counter", {"status"}),
    "watcher_webhook_deliveries": ("counter", {"webhook", "outcome"}),
    "watcher_webhook_pending": ("gauge", set()),
    "watcher_webhook_dead": ("gauge", set()),
    "watcher_webhook_delivery_duration_seconds": ("histogram", {"webhook"}),
    "watcher_detection_lag_seconds": ("histogram", set()),
    "watcher_notify_lag_seconds": ("histogram", set()),
    "watcher_outbox_oldest_age_seconds": ("gauge", set()),
    "watcher_build": ("info", set()),
    # SPEC §16
    "watcher_watches_quarantined": ("gauge", set()),
    # SPEC §13
    "watcher_webhook_endpoint_open": ("gauge", {"webhook"}),
    # SPEC §9 (the soak): read where `/metrics` is served, on the event loop
    "watcher_event_loop_tasks": ("gauge", set()),
    # issue 15 item 5: configuration reloads (SIGHUP)
    "watcher_config_reloads": ("counter", {"result"}),
    "watcher_config_last_reload_successful": ("gauge", set()),
    "watcher_config_last_reload_success_timestamp_seconds": ("gauge", set()),
}
COUNTS = StoreCounts(
    watched_by_status={"active": 6, "queued": 4, "unknown": 1},
    pending_by_webhook={"ops": 2},
    dead_by_webhook={"removed": 3},
    oldest_pending_created_at=1000.0,
    quarantined=2,
)


def _metrics(now: float = 1030.0) -> Metrics:
    return Metrics(CollectorRegistry(), webhooks=("ops", "slack"), now=lambda: now)


def test_every_spec_metric_has_its_type() -> None:
    """Each SPEC §8 family exists with the right type (the store gauges once a snapshot exists)."""
    m = _metrics()
    m.update_counts(COUNTS, now=1010.0, polls_due=0)

    async def collect() -> list[Metric]:  # as the daemon serves `/metrics`: on its event loop
        return list(m.registry.collect())

    families = {f.name: f for f in asyncio.run(collect())}
    assert "watcher_event_loop_tasks" not in {f.name for f in m.registry.collect()}  # no loop: no guess
    for name, (kind, _labels) in SPEC.items():
        assert name in families, name
        assert families[name].type == kind, name
    assert {"process_resident_memory_bytes", "python_info"} <= {
        s.name for f in families.values() for s in f.samples
    }


def test_label_values_are_bounded_enums_or_configured_webhooks() -> None:
    """No label value comes from a job: statuses and outcomes are enums, webhooks from config or store."""
    m = _metrics()
    m.update_counts(COUNTS, now=1010.0, polls_due=0)
    Buckets(ManualClock(), 10.0, {"acme": None}, throttled_gauge=m.upstream_throttled).penalize("acme", 1.0)
    s = parse_metrics(generate_latest(m.registry).decode())
    allowed = {
        "status": {*(x.value for x in JobStatus), *(x.value for x in FinalState), "unknown", "other"},
        "outcome": {*(x.value for x in PollOutcome), "success", "retry", "dead"},
        "webhook": {"ops", "slack", "removed"},
        "loop": {"scheduler", "delivery", "watchlist", "housekeeping"},
        "kind": {x.value for x in StoreFault},
        "workspace": {"acme"},  # configured workspaces only
        "result": {"ok", "failed"},
        "le": None,
        "version": None,
        "generation": None,
        "implementation": None,
        "major": None,
        "minor": None,
        "patchlevel": None,
    }
    for _name, labels in s:
        for key, val in labels:
            assert key in allowed, key
            values = allowed[key]
            assert values is None or val in values, (key, val)


def test_store_gauges_come_from_the_snapshot() -> None:
    """Queue depth, pending, dead (a removed webhook's too) and the backlog, exactly as counted."""
    m = _metrics(now=1030.0)
    m.update_counts(COUNTS, now=1010.0, polls_due=7)
    m.polls_waiting = lambda: 3
    s = parse_metrics(generate_latest(m.registry).decode())
    depth = {dict(k[1])["status"]: v for k, v in s.items() if k[0] == "watcher_watched_jobs"}
    assert depth == {"unknown": 1, "created": 0, "queued": 4, "active": 6, "retrying": 0, "other": 0}
    assert value(s, "watcher_webhook_pending", webhook="ops") == 2
    assert value(s, "watcher_webhook_pending", webhook="slack") == 0
    assert value(s, "watcher_webhook_dead", webhook="removed") == 3
    assert value(s, "watcher_polls_due") == 10  # 7 due in the store + 3 claimed, waiting for a token
    assert value(s, "watcher_outbox_oldest_age_seconds") == 30  # measured at scrape time, not snapshot time
    assert value(s, "watcher_watches_quarantined") == 2  # and not part of the queue depth above


def test_no_store_gauge_before_the_first_snapshot() -> None:
    """Until the store has been counted, the gauges are absent rather than a misleading 0."""
    m = _metrics()
    s = parse_metrics(generate_latest(m.registry).decode())
    assert not [k for k in s if k[0] in ("watcher_watched_jobs", "watcher_polls_due", "watcher_webhook_dead")]
    assert value(s, "watcher_ready") == 0
    m.ready = lambda: True
    assert value(parse_metrics(generate_latest(m.registry).decode()), "watcher_ready") == 1


def test_no_created_series() -> None:
    """The client's `*_created` samples would read as counts (`watcher_polls_created`); they are off."""
    text = generate_latest(_metrics().registry).decode()
    assert "_created" not in text


def _exposed_names() -> set[str]:
    m = _metrics()
    m.update_counts(COUNTS, now=1010.0, polls_due=0)
    m.api_requests.labels(client="ops", route="/v1/watches", code="403").inc()  # exposed once requested
    m.group_members.labels(webhook="slack").observe(14)  # exposed once a grouped message is sent
    m.upstream_throttled.labels(workspace="acme").set(0)  # one series per configured workspace

    async def scrape() -> str:  # as the daemon serves `/metrics`: on its event loop
        return generate_latest(m.registry).decode()

    return {k[0] for k in parse_metrics(asyncio.run(scrape()))} | {"up"}


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(watcher_[a-z_]+|up)\b", expr))


def test_dashboard_is_importable_and_uses_existing_metrics() -> None:
    """The datasource is an import input; every panel's query names only metrics the daemon exports."""
    dash = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert "id" not in dash or dash["id"] is None
    exposed = _exposed_names()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
    for expr in exprs:
        assert _metric_names(expr) <= exposed, expr
    titles = {p["title"] for p in dash["panels"]}
    assert {
        "Queue depth by status", "Job failure rate", "Polls by outcome", "Poll latency",
        "Delivery backlog", "Detection lag", "Delivery latency and notify lag",
    } <= titles  # fmt: skip


def test_every_alert_has_a_runbook_and_uses_existing_metrics() -> None:
    """The alerts the issue asks for, each with severity, summary, description and runbook text."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    assert set(rules) == {
        "JobWatcherDown", "JobWatcherNotReady", "JobWatcherJobFailureRateHigh", "JobWatcherDeadDeliveries",
        "JobWatcherDeliveriesBackingUp", "JobWatcherUpstreamAuthErrors", "JobWatcherUpstreamErrorRatioHigh",
        "JobWatcherSchedulerBacklog", "JobWatcherStoreUnavailable", "JobWatcherWatchesQuarantined",
        "JobWatcherApiClientRefused",
        "JobWatcherEndpointOpen", "JobWatcherConfigReloadFailed",
    }  # fmt: skip
    exposed = _exposed_names()
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), name
        assert len(rule["annotations"]["runbook"]) > 150, name
        assert _metric_names(rule["expr"]) <= exposed, name


def test_observe_many_exposes_what_observe_one_by_one_does() -> None:
    """The scheduler's batched histogram update is exactly a loop of `observe`, bucket edges included
    (a value equal to a bound counts in that bucket)."""
    bounds = (0.005, 0.01, 0.1, 1.0)
    values = [0.0, 0.005, 0.0050001, 0.01, 0.05, 0.1, 0.7, 1.0, 3.5, 0.002, 0.002]
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("d_seconds", "d", buckets=bounds, registry=one)
    h2 = Histogram("d_seconds", "d", buckets=bounds, registry=many)
    for v in values:
        h1.observe(v)
    observe_many(h2, values[:4])
    observe_many(h2, [])
    observe_many(h2, values[4:])

    def samples(r: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        got = parse_metrics(generate_latest(r).decode())
        return {k: v for k, v in got.items() if not k[0].endswith("_created")}  # a time of its own

    got, want = samples(many), samples(one)
    key = ("d_seconds_sum", frozenset())
    assert got.pop(key) == pytest.approx(want.pop(key), rel=1e-12)  # added in another order
    assert got == want
    assert value(got, "d_seconds_bucket", le="0.005") == 4
    assert value(got, "d_seconds_count") == len(values)


def test_grown_statuses_are_labelled_other() -> None:
    """Watches in statuses the upstream grew (SPEC §2) show as status="other", summed, in the queue
    depth; the counters have an `other` series from the start."""
    m = _metrics()
    grown = StoreCounts({"active": 1, "cancelled": 2, "paused": 3, "upstream_expired": 1}, {}, {}, None)
    m.update_counts(grown, now=1010.0, polls_due=0)
    s = parse_metrics(generate_latest(m.registry).decode())
    depth = {dict(k[1])["status"]: v for k, v in s.items() if k[0] == "watcher_watched_jobs"}
    assert depth == {"unknown": 0, "created": 0, "queued": 0, "active": 1, "retrying": 0, "other": 6}
    assert value(s, "watcher_transitions_total", status="other") == 0
    assert value(s, "watcher_jobs_finished_total", status="other") == 0
