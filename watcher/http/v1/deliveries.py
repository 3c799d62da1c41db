"""The `/v1/deliveries` handlers (SPEC §7): list deliveries and replay a dead one."""

from __future__ import annotations

from aiohttp import web

from watcher.http.clients import client_of
from watcher.http.problems import Problem
from watcher.http.state import STATE_KEY
from watcher.http.v1 import parse
from watcher.http.v1.models import DeliveryListQuery, DeliveryPageOut, DeliveryRetryOut
from watcher.http.v1.views import delivery_out, ok
from watcher.models import DeliveryState


async def list_deliveries(request: web.Request) -> web.Response:
    """Deliveries, newest first, optionally by state and webhook; follow `next_cursor`."""
    state = request.app[STATE_KEY]
    q: DeliveryListQuery = parse.query(request, DeliveryListQuery)
    rows = await state.store.list_deliveries(
        state=q.state,
        webhook=q.webhook,
        limit=q.limit + 1,
        before=q.before(),
        workspaces=client_of(request).only(),
    )
    page = rows[: q.limit]
    cursor = str(page[-1].id) if len(rows) > q.limit else None
    return ok(DeliveryPageOut(deliveries=[delivery_out(d) for d in page], next_cursor=cursor))


async def retry_delivery(request: web.Request) -> web.Response:
    """Put a dead delivery back to pending with the same webhook-id; 409 unless it is dead."""
    state = request.app[STATE_KEY]
    delivery_id = parse.delivery_id(request)
    found = await state.store.get_delivery(delivery_id)
    if found is None or not client_of(request).sees(found.event.workspace):
        raise Problem(404, f"no delivery {delivery_id}")
    if found.state is not DeliveryState.DEAD:
        raise Problem(
            409, f"delivery {delivery_id} is {found.state.value}; only a dead delivery can be retried"
        )
    if not await state.store.retry_delivery(delivery_id, state.clock.now()):
        raise Problem(
            409, f"delivery {delivery_id} changed state meanwhile; only a dead delivery can be retried"
        )
    state.wake_delivery()
    again = await state.store.get_delivery(delivery_id)
    if again is None:
        raise Problem(404, f"no delivery {delivery_id}")
    return ok(DeliveryRetryOut(delivery=delivery_out(again)))
