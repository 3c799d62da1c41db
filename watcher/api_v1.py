"""The `/v1` routes (SPEC §7): register, list, inspect, release and forget watches; list and replay
deliveries.

Handlers validate with the models of `api_models`, check names against the configuration, call the store
and wake the loop that has new work. Errors are raised as `Problem`s; the middleware of `problems` renders
them. `ROUTES` is the route table that both `add_v1_routes` and the OpenAPI document are built from.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from watcher.api import STATE_KEY
from watcher.api_models import (
    MAX_DELIVERY_ID,
    MAX_PAGE,
    BatchCreate,
    BatchItemOut,
    BatchOut,
    DeliveryListQuery,
    DeliveryPageOut,
    DeliveryRetryOut,
    WatchCreate,
    WatchDetail,
    WatchListQuery,
    WatchOut,
    WatchPageOut,
    field_errors,
)
from watcher.api_views import delivery_out, transition_out, watch_out
from watcher.errors import StoreError, StoreUnavailable
from watcher.ids import is_uuid
from watcher.models import DeliveryState, Registration, Source
from watcher.problems import Problem, field_problem, read_json
from watcher.store.base import RegisterResult

if TYPE_CHECKING:
    from watcher.daemon import DaemonState

log = structlog.get_logger("watcher.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    """One operation: what `add_v1_routes` registers and what the OpenAPI document describes."""

    method: str
    path: str
    handler: Handler
    summary: str
    responses: dict[int, type[BaseModel] | None]  # success statuses; None: no body
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()  # problem statuses beyond the ones every /v1 route may answer


def _ok(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status, headers=headers)


def _query(request: web.Request, model: type[BaseModel]) -> Any:
    raw = {key: request.query.get(key) for key in request.query}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = field_errors(exc)
        raise Problem(
            400, "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors
        ) from None


def _job_id(request: web.Request) -> str:
    raw = request.match_info["job_id"]
    if not is_uuid(raw):  # not `match`: `$` also matches before a trailing newline
        raise field_problem("job_id", "must be a UUID like 5135bfe3-b2c7-41f3-a44f-f4b58e7384df")
    return raw.lower()


def _delivery_id(request: web.Request) -> int:
    raw = request.match_info["delivery_id"]
    # isascii: str.isdigit also accepts digits of other scripts, and superscripts that int() refuses.
    if raw.isascii() and raw.isdigit() and len(raw) <= 19 and 0 < int(raw) <= MAX_DELIVERY_ID:
        return int(raw)
    raise field_problem("delivery_id", f"must be an integer from 1 to {MAX_DELIVERY_ID}")


def _registration(data: Any, request: web.Request, prefix: str = "") -> Registration:
    """A validated registration; raises a 400 problem listing every bad field."""
    state = request.app[STATE_KEY]
    up = state.settings.upstream
    try:
        item = WatchCreate.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc, prefix)
        raise Problem(400, _summary(errors), errors=errors) from None
    errors = []
    workspace = item.workspace or up.workspace_slug
    if workspace != up.workspace_slug and workspace not in up.workspaces:
        known = ", ".join([up.workspace_slug, *up.workspaces])
        errors.append(
            {"field": _join(prefix, "workspace"), "message": f"unknown workspace (configured: {known})"}
        )
    hooks = {w.name for w in state.settings.webhooks}
    for i, name in enumerate(item.webhooks or ()):
        if name not in hooks:
            errors.append(
                {"field": _join(prefix, f"webhooks[{i}]"), "message": "not a configured webhook name"}
            )
    if errors:
        raise Problem(400, _summary(errors), errors=errors)
    return Registration(
        job_id=item.job_id,
        workspace=workspace,
        source=Source.API,
        labels=dict(item.labels),
        webhooks=None if item.webhooks is None else tuple(dict.fromkeys(item.webhooks)),
        max_watch_s=item.max_watch_s,
    )


def _join(prefix: str, field: str) -> str:
    return f"{prefix}.{field}" if prefix else field


def _summary(errors: list[dict[str, str]]) -> str:
    first = f"{errors[0]['field']}: {errors[0]['message']}"
    return first if len(errors) == 1 else f"{first} (and {len(errors) - 1} more)"


def _max_body(request: web.Request) -> int:
    return request.app[STATE_KEY].settings.api.max_body_bytes


# -- watches ----------------------------------------------------------------------------------------------


async def create_watch(request: web.Request) -> web.Response:
    """Register one job: 201 if new, 200 if it was already watched (nothing else changes then)."""
    state = request.app[STATE_KEY]
    reg = _registration(await read_json(request, _max_body(request)), request)
    (result,) = await state.store.register([reg], state.clock.now())
    if result is RegisterResult.CREATED:
        state.wake_scheduler()
    watch = await state.store.get_watch(reg.job_id)
    if watch is None:  # deleted or purged between the two calls
        raise Problem(409, "the watch was deleted while it was being registered; register it again")
    status = 201 if result is RegisterResult.CREATED else 200
    return _ok(watch_out(watch), status, {"Location": f"/v1/watches/{reg.job_id}"})


async def create_watches(request: web.Request) -> web.Response:
    """Register up to 1000 jobs; every item gets its own result, a bad one sinks nothing else."""
    state = request.app[STATE_KEY]
    data = await read_json(request, _max_body(request))
    try:
        envelope = BatchCreate.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc)
        raise Problem(400, _summary(errors), errors=errors) from None
    results: list[BatchItemOut] = []
    regs: list[tuple[int, Registration]] = []
    for i, item in enumerate(envelope.watches):
        try:
            regs.append((i, _registration(item, request, prefix=f"watches[{i}]")))
        except Problem as problem:
            results.append(_invalid(i, item, problem.errors))
    stored = await _register_batch(state, [r for _, r in regs])
    if RegisterResult.CREATED in stored:
        state.wake_scheduler()
    for (i, reg), res in zip(regs, stored, strict=True):
        if res is None:
            message = "the store refused this item; it is not registered"
            results.append(_invalid(i, envelope.watches[i], [{"field": f"watches[{i}]", "message": message}]))
        else:
            results.append(BatchItemOut(index=i, job_id=reg.job_id, result=res.value))
    results.sort(key=lambda r: r.index)
    count = {k: sum(r.result == k for r in results) for k in ("created", "existing", "invalid")}
    return _ok(BatchOut(results=results, **count))


async def _register_batch(state: DaemonState, regs: list[Registration]) -> list[RegisterResult | None]:
    """Register `regs` at once or, if the store refuses that, one by one; None where it refused an item.

    A plain `StoreError` is about this request's data (one row the database will not take sinks the
    whole statement), so retrying item by item lands every other item. `StoreUnavailable` is the store
    as a whole being out: it propagates (503). Items of chunks that the store committed before it failed
    come back `existing` from the second pass: registering is idempotent.
    """
    if not regs:
        return []
    now = state.clock.now()
    try:
        return list(await state.store.register(regs, now))
    except StoreUnavailable:
        raise
    except StoreError as exc:
        log.warning("api.batch_store_error", items=len(regs), error=str(exc))
    results: list[RegisterResult | None] = []
    for reg in regs:
        try:
            (res,) = await state.store.register([reg], now)
        except StoreUnavailable:
            raise
        except StoreError as exc:
            log.warning("api.batch_item_refused", job_id=reg.job_id, error=str(exc))
            res = None
        results.append(res)
    return results


def _invalid(index: int, item: Any, errors: list[dict[str, str]]) -> BatchItemOut:
    """An `invalid` result; its job_id only when the item has a well-formed one, never other input."""
    job = item.get("job_id") if isinstance(item, dict) else None
    return BatchItemOut.model_validate(
        {
            "index": index,
            "job_id": job.lower() if isinstance(job, str) and is_uuid(job) else None,
            "result": "invalid",
            "errors": errors,
        }
    )


async def list_watches(request: web.Request) -> web.Response:
    """Watches by job id, optionally filtered; follow `next_cursor` for the next page."""
    state = request.app[STATE_KEY]
    q: WatchListQuery = _query(request, WatchListQuery)
    page = await state.store.list_watches(
        status=q.status, limit=q.limit, cursor=q.cursor, label=q.label_pair()
    )
    return _ok(WatchPageOut(watches=[watch_out(w) for w in page.watches], next_cursor=page.next_cursor))


async def get_watch(request: web.Request) -> web.Response:
    """One watch with its transitions and their deliveries."""
    state = request.app[STATE_KEY]
    job_id = _job_id(request)
    watch = await state.store.get_watch(job_id)
    if watch is None:
        raise Problem(404, f"job {job_id} is not watched")
    events = await state.store.events_for(job_id)
    deliveries = await state.store.list_deliveries(job_id=job_id, limit=MAX_PAGE)
    base = watch_out(watch).model_dump()
    return _ok(
        WatchDetail(
            **base,
            transitions=[transition_out(e) for e in events],
            deliveries=[delivery_out(d) for d in sorted(deliveries, key=lambda d: d.id)],
        )
    )


async def delete_watch(request: web.Request) -> web.Response:
    """Stop watching a job (whatever registered it); a later registration starts a fresh watch."""
    state = request.app[STATE_KEY]
    job_id = _job_id(request)
    if not await state.store.delete_watch(job_id):
        raise Problem(404, f"job {job_id} is not watched")
    return web.Response(status=204)


async def release_watch(request: web.Request) -> web.Response:
    """Take a quarantined watch out of quarantine: it is polled again at once, its failures reset."""
    state = request.app[STATE_KEY]
    job_id = _job_id(request)
    if not await state.store.release_quarantine(job_id, state.clock.now()):
        if await state.store.get_watch(job_id) is None:
            raise Problem(404, f"job {job_id} is not watched")
        raise Problem(409, f"job {job_id} is not quarantined")
    state.wake_scheduler()
    watch = await state.store.get_watch(job_id)
    if watch is None:  # deleted meanwhile
        raise Problem(404, f"job {job_id} is not watched")
    log.info("watch.released", job_id=job_id, workspace=watch.workspace)
    return _ok(watch_out(watch))


# -- deliveries -------------------------------------------------------------------------------------------


async def list_deliveries(request: web.Request) -> web.Response:
    """Deliveries, newest first, optionally by state and webhook; follow `next_cursor`."""
    state = request.app[STATE_KEY]
    q: DeliveryListQuery = _query(request, DeliveryListQuery)
    rows = await state.store.list_deliveries(
        state=q.state, webhook=q.webhook, limit=q.limit + 1, before=q.before()
    )
    page = rows[: q.limit]
    cursor = str(page[-1].id) if len(rows) > q.limit else None
    return _ok(DeliveryPageOut(deliveries=[delivery_out(d) for d in page], next_cursor=cursor))


async def retry_delivery(request: web.Request) -> web.Response:
    """Put a dead delivery back to pending with the same webhook-id; 409 unless it is dead."""
    state = request.app[STATE_KEY]
    delivery_id = _delivery_id(request)
    found = await state.store.get_delivery(delivery_id)
    if found is None:
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
    return _ok(DeliveryRetryOut(delivery=delivery_out(again)))


ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/watches",
        create_watch,
        "Watch a job",
        {201: WatchOut, 200: WatchOut},
        WatchCreate,
        errors=(409,),
    ),
    Route("POST", "/v1/watches/batch", create_watches, "Watch up to 1000 jobs", {200: BatchOut}, BatchCreate),
    Route("GET", "/v1/watches", list_watches, "List watches", {200: WatchPageOut}, query=WatchListQuery),
    Route("GET", "/v1/watches/{job_id}", get_watch, "One watch", {200: WatchDetail}, errors=(404,)),
    Route("DELETE", "/v1/watches/{job_id}", delete_watch, "Stop watching a job", {204: None}, errors=(404,)),
    Route(
        "POST",
        "/v1/watches/{job_id}/release",
        release_watch,
        "Release a quarantined watch",
        {200: WatchOut},
        errors=(404, 409),
    ),
    Route(
        "GET",
        "/v1/deliveries",
        list_deliveries,
        "List deliveries",
        {200: DeliveryPageOut},
        query=DeliveryListQuery,
    ),
    Route(
        "POST",
        "/v1/deliveries/{delivery_id}/retry",
        retry_delivery,
        "Replay a dead delivery",
        {200: DeliveryRetryOut},
        errors=(404, 409),
    ),
)


def add_v1_routes(app: web.Application) -> None:
    """Register every route of `ROUTES` on `app`."""
    for r in ROUTES:
        # `batch` is not a job id: without the lookahead `/v1/watches/batch` would also be `{job_id}`, and
        # a 405 there would advertise that route's GET and DELETE in `Allow`.
        path = r.path.replace("{job_id}", r"{job_id:(?!batch\Z)[^/]+}")
        app.router.add_route(r.method, path, r.handler)
