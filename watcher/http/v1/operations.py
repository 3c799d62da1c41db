"""Operating webhooks (SPEC §15): `POST /v1/deliveries/retry` replays dead deliveries in bulk, and
`POST /v1/webhooks/{name}/test` sends a signed `webhook.test` event to one webhook at once and answers what
the receiver said. Both need the `deliveries:write` scope."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from watcher.http.clients import audit, client_of
from watcher.http.problems import Problem, field_problem, read_json
from watcher.http.state import STATE_KEY
from watcher.http.v1 import parse
from watcher.http.v1.models import Name, Time, _Request, field_errors
from watcher.models import CALLBACK

# Dead deliveries read per store query while replaying; a replay goes on page by page until none is left.
PAGE = 500


class BulkRetry(_Request):
    """Which dead deliveries to replay: all, or those of one webhook, created within [since, until)."""

    webhook: Name | None = Field(default=None, description="Only this webhook's (or `callback`)")
    state: Literal["dead"] = Field(default="dead", description="Only dead deliveries are replayed")
    since: Time | None = Field(default=None, description="Only deliveries created at or after this time")
    until: Time | None = Field(default=None, description="Only deliveries created before this time")


class BulkRetryOut(BaseModel):
    """How many dead deliveries are pending again (same webhook-id, attempts reset, due now)."""

    retried: int


class WebhookTestOut(BaseModel):
    """What the receiver said to the test event."""

    webhook: str
    event_id: str = Field(description="The test event's id (the webhook-id header); new for every test")
    delivered: bool = Field(description="The receiver answered 2xx")
    status_code: int | None = Field(description="The receiver's HTTP status; null when none came")
    detail: str = Field(
        description="One line: `HTTP 200`, `timeout`, `connection error: …`, `render failed: …`"
    )
    duration_s: float


def _time(field: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise field_problem(field, "must be an RFC 3339 date-time like 2026-04-01T10:18:43Z") from None
    if parsed.tzinfo is None:
        raise field_problem(field, "must be an RFC 3339 date-time with a time zone (Z or ±hh:mm)")
    return parsed.timestamp()


async def retry_deliveries(request: web.Request) -> web.Response:
    """Put every dead delivery that matches back to pending; answer how many."""
    state = request.app[STATE_KEY]
    try:
        body = BulkRetry.model_validate(await read_json(request, parse.max_body(request)))
    except ValidationError as exc:
        errors = field_errors(exc)
        raise Problem(400, parse.summary(errors), errors=errors) from None
    since, until = _time("since", body.since), _time("until", body.until)
    known = {w.name for w in state.settings.webhooks} | {CALLBACK}
    if body.webhook is not None and body.webhook not in known:
        raise Problem(404, f"no webhook {body.webhook!r}")
    client = client_of(request)
    retried, before, now = 0, None, state.clock.now()
    while True:
        page = await state.store.list_deliveries(
            state="dead", webhook=body.webhook, limit=PAGE, before=before, workspaces=client.only()
        )
        for d in page:
            created = d.created_at
            if (since is None or created >= since) and (until is None or created < until):
                retried += await state.store.retry_delivery(d.id, now)
        if len(page) < PAGE:
            break
        before = page[-1].id
    audit(request, webhook=body.webhook, retried=retried)
    if retried:
        state.wake_delivery()
    return web.json_response(BulkRetryOut(retried=retried).model_dump(mode="json"))


async def test_webhook(request: web.Request) -> web.Response:
    """Send a `webhook.test` event to the webhook now, signed like any delivery; answer the outcome."""
    state = request.app[STATE_KEY]
    name = request.match_info["name"]
    if name not in {w.name for w in state.settings.webhooks}:
        raise Problem(404, f"no webhook {name!r}")
    if state.test_webhook is None:
        raise Problem(503, "the daemon is not ready to send", headers={"Retry-After": "1"})
    audit(request, webhook=name)
    result = await state.test_webhook(name)
    out = WebhookTestOut(
        webhook=result.webhook,
        event_id=result.event_id,
        delivered=result.delivered,
        status_code=result.status_code,
        detail=result.detail,
        duration_s=round(result.duration_s, 4),
    )
    return web.json_response(out.model_dump(mode="json"))
