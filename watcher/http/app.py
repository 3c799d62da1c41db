"""The HTTP server on `[api] listen`: health, readiness, metrics, the OpenAPI document and the `/v1` API."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from watcher.http.clients import auth_middleware, observe_middleware
from watcher.http.openapi import openapi_document
from watcher.http.problems import problem_middleware
from watcher.http.state import STATE_KEY, AppState
from watcher.http.statuspage.page import status_page
from watcher.http.v1.routes import add_v1_routes


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the store answers, no loop is waiting out a store outage, and every loop runs."""
    state = request.app[STATE_KEY]
    problems = []
    if not state.ready:
        problems.append("starting or stopping")
    elif not state.loops.loops_alive():
        problems.append("a background loop is not running")
    outage = state.health.describe()
    if outage is not None:
        # Already known: no ping, which could take seconds against a store that is out.
        problems.append(f"store unavailable ({outage['kind']}) for {outage['for_s']}s: {outage['reason']}")
    else:
        try:
            if not await state.store.ping():
                problems.append("store not reachable")
        except Exception as exc:  # any store failure means not ready, never a 500
            problems.append(f"store not reachable: {type(exc).__name__}")
    if problems:
        body: dict[str, Any] = {"status": "not ready", "problems": problems}
        if outage is not None:
            body["store"] = outage
        return web.json_response(body, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of the daemon's registry."""
    state = request.app[STATE_KEY]
    body = generate_latest(state.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(state: AppState) -> web.Application:
    """The aiohttp application with every route of the daemon."""
    api = state.settings.api
    # client_max_size backs up problem_middleware's Content-Length check for bodies read by aiohttp itself.
    app = web.Application(
        middlewares=[
            observe_middleware(state.metrics),
            problem_middleware(api.max_body_bytes, body_timeout_s=api.body_timeout_s),
            auth_middleware(lambda: state.clients, state.clock.monotonic),
        ],
        client_max_size=api.max_body_bytes,
    )
    app[STATE_KEY] = state
    cached: list[Any] = [state.settings, openapi_document(state.settings)]  # the settings it describes

    async def openapi(request: web.Request) -> web.Response:
        """The OpenAPI 3.1 document of every route (it names the webhooks: rebuilt after a reload)."""
        if cached[0] is not state.settings:
            cached[:] = [state.settings, openapi_document(state.settings)]
        return web.json_response(cached[1])

    app.router.add_get("/openapi.json", openapi)
    add_v1_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", status_page(state))
    return app
