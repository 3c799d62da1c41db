"""`GET /v1/webhooks` (SPEC §13): every configured webhook, and the callbacks together, with the state of
their circuit breakers and their queues."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from watcher.clock import iso_utc
from watcher.http.state import STATE_KEY
from watcher.http.v1.models import WebhookHealthOut, WebhookListOut
from watcher.http.v1.views import ok
from watcher.models import CALLBACK, BreakerState, EndpointHealth

_WORST = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def health_out(
    name: str, fmt: str, breakers: Sequence[EndpointHealth], pending: int, dead: int
) -> WebhookHealthOut:
    """One item: the worst of `breakers` (a webhook has at most one; callbacks one per endpoint)."""
    worst = max(breakers, key=lambda h: (_WORST[h.state], h.consecutive_failures), default=None)
    opened = [h for h in breakers if h.state is not BreakerState.CLOSED]
    if worst is None:
        worst = EndpointHealth(name, name)
    until = worst.open_until if worst.state is not BreakerState.CLOSED else None
    return WebhookHealthOut(
        name=name,
        format=fmt,
        state=worst.state.value,
        consecutive_failures=worst.consecutive_failures,
        open_until=None if until is None else iso_utc(until),
        last_error=worst.last_error,
        pending=pending,
        dead=dead,
        open_endpoints=len(opened),
    )


async def list_webhooks(request: web.Request) -> web.Response:
    """Each configured webhook and, when enabled, `callback`: breaker state, failures, queue sizes."""
    state = request.app[STATE_KEY]
    settings = state.settings
    breakers = await state.store.endpoints()
    counts = await state.store.counts()
    by_name: dict[str, list[EndpointHealth]] = {}
    for h in breakers:
        by_name.setdefault(h.webhook, []).append(h)
    names = [(w.name, w.format) for w in settings.webhooks]
    if settings.callbacks.enabled:
        names.append((CALLBACK, "standard"))
    items = [
        health_out(
            name,
            fmt,
            by_name.get(name, []),
            counts.pending_by_webhook.get(name, 0),
            counts.dead_by_webhook.get(name, 0),
        )
        for name, fmt in names
    ]
    return ok(WebhookListOut(items=items))
