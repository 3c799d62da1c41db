"""What a saved poll decision tells the world: its metrics and its log events.

The scheduler calls `record_decision` for each decision of a committed batch that has something to say (a
transition, an event, a final state); most polls change nothing and are only counted in
`watcher_polls_total`.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from watcher.metrics import Metrics
from watcher.polling.policy import Decision
from watcher.statuses import SLOW_EVENT, metric_label

log = structlog.get_logger("watcher.scheduler")


def record_decision(decision: Decision, metrics: Metrics, on_events: Callable[[], None] | None) -> None:
    """Count and log one saved decision; wake the outbox (`on_events`) if it made deliveries."""
    watch = decision.saved.watch
    if decision.transition:
        metrics.transitions.labels(status=metric_label(watch.status or "unknown")).inc()
        if decision.detection_lag_s is not None:
            metrics.detection_lag.observe(max(0.0, decision.detection_lag_s))
    for new in decision.saved.events:
        kind = "job.transition" if decision.transition else "job.verdict"
        log.info(
            "job.slow" if new.event.type == SLOW_EVENT else kind,
            job_id=watch.job_id,
            workspace=watch.workspace,
            status=watch.final or watch.status,
            previous_status=decision.previous_status,
            event_id=new.event.id,
            type=new.event.type,
            webhooks=list(new.webhooks),
            reason=new.event.payload["data"].get("reason"),
        )
    if decision.final is not None:
        metrics.job_finished(metric_label(decision.final), decision.previous_status)
        log.info(
            "job.finished",
            job_id=watch.job_id,
            workspace=watch.workspace,
            status=str(decision.final),
            polls=watch.polls,
        )
    # Only events routed to a webhook made deliveries: waking the outbox for the others (most first
    # observations) would cost it two queries per poll for nothing.
    if on_events is not None and any(new.webhooks for new in decision.saved.events):
        on_events()
