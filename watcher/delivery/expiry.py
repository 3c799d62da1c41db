"""`max_delivery_age_s` (SPEC §13): an event still undelivered after that long is dead with reason `max_age`.

The worker checks each claimed delivery's age, and every `SWEEP_S` makes the old deliveries nobody claims
dead in bulk (those of an open endpoint wait unclaimed, so no claim would reach them).
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from watcher.delivery.target import WebhookTarget
from watcher.metrics import Metrics
from watcher.models import DeadReason, DeliveryOutcome
from watcher.store.base import Store

log = structlog.get_logger("watcher.delivery")

SWEEP_S = 5.0  # how often deliveries past their `max_delivery_age_s` are looked for in bulk


def too_old(target: WebhookTarget) -> str:
    """The `last_error` of a delivery dead for `max_age`."""
    return f"max_age: undelivered after max_delivery_age_s={target.max_delivery_age_s:g}"


async def expire_old(store: Store, targets: Iterable[WebhookTarget], now: float, metrics: Metrics) -> None:
    """Make every unclaimed delivery of `targets` older than its `max_delivery_age_s` dead, counted and
    logged per target."""
    for target in targets:
        cutoff = now - target.max_delivery_age_s
        count = await store.expire_deliveries(target.name, cutoff, too_old(target))
        if count:
            metrics.deliveries.labels(webhook=target.name, outcome=DeliveryOutcome.DEAD).inc(count)
            log.error("delivery.expired", webhook=target.name, count=count, reason=DeadReason.MAX_AGE)
