"""The retry policy of webhook delivery (SPEC §6), pure: what one attempt's result makes of a delivery."""

from __future__ import annotations

import random

from watcher.delivery.target import WebhookTarget
from watcher.delivery.webhook import SendResult
from watcher.models import DeadReason, Delivery, DeliveryOutcome, DeliveryState, DeliveryUpdate

RETRY_JITTER = 0.2  # a delay is drawn from [1 - jitter, 1] x the nominal backoff, so it never exceeds the cap
_MAX_ERROR_LEN = 200


def retry_delay(
    attempts: int, target: WebhookTarget, rng: random.Random, retry_after_s: float | None
) -> float:
    """Seconds before the next attempt after `attempts` failed ones: capped exponential, jittered.

    The nominal delay is `retry_initial_s * 2**(attempts-1)` capped at `retry_max_s`; the result is drawn
    from `[(1 - RETRY_JITTER) * nominal, nominal]` and is never shorter than the receiver's Retry-After.
    """
    exponent = max(0, attempts - 1)
    # Cap the exponent before raising so a huge attempt count cannot overflow a float.
    nominal = min(target.retry_max_s, target.retry_initial_s * 2.0 ** min(exponent, 64))
    delay = nominal * rng.uniform(1.0 - RETRY_JITTER, 1.0)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay


def next_update(
    delivery: Delivery, result: SendResult, now: float, target: WebhookTarget, rng: random.Random
) -> DeliveryUpdate:
    """The delivery's state after one attempt with `result`: delivered, dead, or pending for a retry."""
    attempts = delivery.attempts + 1
    reason = result.detail[:_MAX_ERROR_LEN] or result.kind.value
    if result.kind is DeliveryOutcome.SUCCESS:
        return DeliveryUpdate(DeliveryState.DELIVERED, attempts, now, None, delivered_at=now)
    if result.kind is DeliveryOutcome.DEAD:
        return DeliveryUpdate(DeliveryState.DEAD, attempts, now, reason, dead_reason=result.dead_reason)
    if attempts >= target.max_attempts:
        return DeliveryUpdate(DeliveryState.DEAD, attempts, now, reason, dead_reason=DeadReason.MAX_ATTEMPTS)
    delay = retry_delay(attempts, target, rng, result.retry_after_s)
    return DeliveryUpdate(DeliveryState.PENDING, attempts, now + delay, reason)
