"""What one attempt's outcome leaves behind besides the store: metrics and one log event (SPEC §6, §10).

A grouped message (`group_window_s`, SPEC §15) counts as an attempt of each member delivery, so the
delivery counters add up to the deliveries the store holds, and logs once with the group's id and size.
"""

from __future__ import annotations

from typing import Any

import structlog

from watcher.delivery.bodies import message_id
from watcher.delivery.webhook import SendResult
from watcher.metrics import Metrics
from watcher.models import Delivery, DeliveryOutcome, DeliveryUpdate

log = structlog.get_logger("watcher.delivery")


def record_outcome(
    metrics: Metrics,
    delivery: Delivery,
    update: DeliveryUpdate,
    result: SendResult,
    now: float,
    kept: bool,
    *,
    sent: bool = True,
) -> None:
    """Metrics and one log event per attempt outcome."""
    outcome = update.outcome
    webhook = delivery.webhook
    members = delivery.group or (delivery,)
    metrics.deliveries.labels(webhook=webhook, outcome=outcome).inc(len(members))
    if sent:
        metrics.delivery_duration.labels(webhook=webhook).observe(result.duration_s)
        if delivery.group:
            metrics.group_members.labels(webhook=webhook).observe(len(members))
    if outcome is DeliveryOutcome.SUCCESS:
        for m in members:
            metrics.notify_lag.observe(max(0.0, now - m.event.created_at))
    fields: dict[str, Any] = {
        "job_id": delivery.event.job_id,
        "workspace": delivery.event.workspace,
        "event_id": delivery.event.id,
        "event_type": delivery.event.type,
        "webhook": webhook,
        "attempt": update.attempts,
        "status_code": result.status_code,
        "reason": result.detail,
    }
    if delivery.group:
        # The first member's job and event stand for the group in the fields above.
        fields["group_id"] = message_id(delivery)
        fields["group_members"] = len(members)
    if not kept:
        # Another worker took the lease over (it expired mid-send); its outcome is the one that counts.
        log.warning("delivery.lease_lost", **fields)
    if outcome is DeliveryOutcome.SUCCESS:
        log.info("delivery.success", duration_s=round(result.duration_s, 4), **fields)
    elif outcome is DeliveryOutcome.RETRY:
        log.warning("delivery.retry", retry_in_s=round(update.next_attempt_at - now, 3), **fields)
    else:
        log.error("delivery.dead", **fields)
