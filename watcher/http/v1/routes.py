"""The `/v1` route table (SPEC §7): what `add_v1_routes` registers and what the OpenAPI document describes.

`ROUTES` is the one place an operation is declared: method, path, handler, summary, the models of its body,
query and answers, and the problems it may answer beyond the ones every `/v1` route may.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from pydantic import BaseModel

from watcher.http.v1.deliveries import list_deliveries, retry_delivery
from watcher.http.v1.jobtypes import list_job_types
from watcher.http.v1.models import (
    BatchCreate,
    BatchOut,
    DeliveryListQuery,
    DeliveryPageOut,
    DeliveryRetryOut,
    JobTypesOut,
    WatchCreate,
    WatchDetail,
    WatchListQuery,
    WatchOut,
    WatchPageOut,
    WebhookListOut,
)
from watcher.http.v1.operations import BulkRetry, BulkRetryOut, WebhookTestOut, retry_deliveries, test_webhook
from watcher.http.v1.watches import (
    create_watch,
    create_watches,
    delete_watch,
    get_watch,
    list_watches,
    release_watch,
)
from watcher.http.v1.webhooks import list_webhooks

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


ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/watches",
        create_watch,
        "Watch a job",
        {201: WatchOut, 200: WatchOut},
        WatchCreate,
        errors=(409, 507),
    ),
    Route(
        "POST",
        "/v1/watches/batch",
        create_watches,
        "Watch up to 1000 jobs",
        {200: BatchOut},
        BatchCreate,
        errors=(507,),
    ),
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
        "/v1/deliveries/retry",
        retry_deliveries,
        "Replay dead deliveries in bulk",
        {200: BulkRetryOut},
        BulkRetry,
        errors=(404,),
    ),
    Route(
        "POST",
        "/v1/deliveries/{delivery_id}/retry",
        retry_delivery,
        "Replay a dead delivery",
        {200: DeliveryRetryOut},
        errors=(404, 409),
    ),
    Route("GET", "/v1/webhooks", list_webhooks, "Webhooks and their circuit breakers", {200: WebhookListOut}),
    Route(
        "POST",
        "/v1/webhooks/{name}/test",
        test_webhook,
        "Send a test event to a webhook now",
        {200: WebhookTestOut},
        errors=(404,),
    ),
    Route("GET", "/v1/job-types", list_job_types, "Learnt job types and their durations", {200: JobTypesOut}),
)


def add_v1_routes(app: web.Application) -> None:
    """Register every route of `ROUTES` on `app`."""
    for r in ROUTES:
        # `batch` is not a job id: without the lookahead `/v1/watches/batch` would also be `{job_id}`, and
        # a 405 there would advertise that route's GET and DELETE in `Allow`.
        path = r.path.replace("{job_id}", r"{job_id:(?!batch\Z)[^/]+}")
        app.router.add_route(r.method, path, r.handler)
