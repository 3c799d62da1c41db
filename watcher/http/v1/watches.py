"""The `/v1/watches` handlers (SPEC §7): register one or many, list, inspect, release and forget watches.

Handlers validate with the models of `watcher.http.v1.models`, check names against the configuration, call
the store and wake the scheduler when there is new work. Errors are raised as `Problem`s.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from watcher.errors import StoreError, StoreUnavailable
from watcher.http.clients import audit, client_of
from watcher.http.problems import Problem, read_json
from watcher.http.state import STATE_KEY, AppState
from watcher.http.v1 import access, parse
from watcher.http.v1.models import (
    MAX_PAGE,
    BatchCreate,
    BatchItemOut,
    BatchOut,
    WatchCreate,
    WatchDetail,
    WatchListQuery,
    WatchPageOut,
    field_errors,
)
from watcher.http.v1.views import delivery_out, ok, transition_out, watch_out
from watcher.ids import is_uuid
from watcher.models import Registration, Source
from watcher.store.base import RegisterResult

log = structlog.get_logger("watcher.api")


def _registration(data: Any, request: web.Request, prefix: str = "") -> Registration:
    """A validated registration; raises a 400 problem listing every bad field."""
    state = request.app[STATE_KEY]
    up = state.settings.upstream
    try:
        item = WatchCreate.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc, prefix)
        raise Problem(400, parse.summary(errors), errors=errors) from None
    errors = []
    workspace = item.workspace or up.workspace_slug
    if workspace != up.workspace_slug and workspace not in up.workspaces:
        known = ", ".join([up.workspace_slug, *up.workspaces])
        errors.append(
            {"field": parse.join(prefix, "workspace"), "message": f"unknown workspace (configured: {known})"}
        )
    hooks = {w.name for w in state.settings.webhooks}
    for i, name in enumerate(item.webhooks or ()):
        if name not in hooks:
            errors.append(
                {"field": parse.join(prefix, f"webhooks[{i}]"), "message": "not a configured webhook name"}
            )
    if errors:
        raise Problem(400, parse.summary(errors), errors=errors)
    return Registration(
        job_id=item.job_id,
        workspace=workspace,
        source=Source.API,
        labels=dict(item.labels),
        webhooks=None if item.webhooks is None else tuple(dict.fromkeys(item.webhooks)),
        max_watch_s=item.max_watch_s,
    )


async def create_watch(request: web.Request) -> web.Response:
    """Register one job: 201 if new, 200 if it was already watched (nothing else changes then)."""
    state = request.app[STATE_KEY]
    reg = _registration(await read_json(request, parse.max_body(request)), request)
    audit(request, job_id=reg.job_id, workspace=reg.workspace)
    refusal = await access.refuse_registration(request, reg)
    if refusal is not None:
        raise Problem(403, refusal)
    access.check_capacity(request, 1)
    (result,) = await state.store.register([reg], state.clock.now())
    if result is RegisterResult.CREATED:
        state.wake_scheduler()
    watch = await state.store.get_watch(reg.job_id)
    if watch is None:  # deleted or purged between the two calls
        raise Problem(409, "the watch was deleted while it was being registered; register it again")
    status = 201 if result is RegisterResult.CREATED else 200
    return ok(watch_out(watch), status, {"Location": f"/v1/watches/{reg.job_id}"})


async def create_watches(request: web.Request) -> web.Response:
    """Register up to 1000 jobs; every item gets its own result, a bad one sinks nothing else."""
    state = request.app[STATE_KEY]
    data = await read_json(request, parse.max_body(request))
    try:
        envelope = BatchCreate.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc)
        raise Problem(400, parse.summary(errors), errors=errors) from None
    results: list[BatchItemOut] = []
    regs: list[tuple[int, Registration]] = []
    for i, item in enumerate(envelope.watches):
        try:
            reg = _registration(item, request, prefix=f"watches[{i}]")
        except Problem as problem:
            results.append(_invalid(i, item, problem.errors))
            continue
        refusal = await access.refuse_registration(request, reg)
        if refusal is None:
            regs.append((i, reg))
        else:
            error = {"field": f"watches[{i}].workspace", "message": refusal}
            results.append(BatchItemOut(index=i, job_id=reg.job_id, result="forbidden", errors=[error]))
    audit(request, items=len(envelope.watches))
    access.check_capacity(request, len(regs))
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
    count = {k: sum(r.result == k for r in results) for k in ("created", "existing", "invalid", "forbidden")}
    return ok(BatchOut(results=results, **count))


async def _register_batch(state: AppState, regs: list[Registration]) -> list[RegisterResult | None]:
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
    q: WatchListQuery = parse.query(request, WatchListQuery)
    page = await state.store.list_watches(
        status=q.status,
        limit=q.limit,
        cursor=q.cursor,
        label=q.label_pair(),
        workspaces=client_of(request).only(),
    )
    return ok(WatchPageOut(watches=[watch_out(w) for w in page.watches], next_cursor=page.next_cursor))


async def get_watch(request: web.Request) -> web.Response:
    """One watch with its transitions and their deliveries."""
    state = request.app[STATE_KEY]
    job_id = parse.job_id(request)
    watch = await access.visible_watch(request, job_id)
    events = await state.store.events_for(job_id)
    deliveries = await state.store.list_deliveries(job_id=job_id, limit=MAX_PAGE)
    base = watch_out(watch).model_dump()
    return ok(
        WatchDetail(
            **base,
            transitions=[transition_out(e) for e in events],
            deliveries=[delivery_out(d) for d in sorted(deliveries, key=lambda d: d.id)],
        )
    )


async def delete_watch(request: web.Request) -> web.Response:
    """Stop watching a job (whatever registered it); a later registration starts a fresh watch."""
    state = request.app[STATE_KEY]
    job_id = parse.job_id(request)
    await access.require_visible(request, job_id)
    if not await state.store.delete_watch(job_id):
        raise Problem(404, f"job {job_id} is not watched")
    return web.Response(status=204)


async def release_watch(request: web.Request) -> web.Response:
    """Take a quarantined watch out of quarantine: it is polled again at once, its failures reset."""
    state = request.app[STATE_KEY]
    job_id = parse.job_id(request)
    await access.require_visible(request, job_id)
    if not await state.store.release_quarantine(job_id, state.clock.now()):
        if await state.store.get_watch(job_id) is None:
            raise Problem(404, f"job {job_id} is not watched")
        raise Problem(409, f"job {job_id} is not quarantined")
    state.wake_scheduler()
    watch = await state.store.get_watch(job_id)
    if watch is None:  # deleted meanwhile
        raise Problem(404, f"job {job_id} is not watched")
    log.info("watch.released", job_id=job_id, workspace=watch.workspace)
    return ok(watch_out(watch))
