"""The HTTP server on `[api] listen`: health, readiness and metrics (the `/v1` API builds on this app)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from watcher.daemon import DaemonState

STATE_KEY: web.AppKey[DaemonState] = web.AppKey("state")


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the store answers and every background loop runs."""
    state = request.app[STATE_KEY]
    problems = []
    if not state.ready:
        problems.append("starting or stopping")
    elif not state.loops_alive():
        problems.append("a background loop is not running")
    try:
        if not await state.store.ping():
            problems.append("store not reachable")
    except Exception as exc:  # any store failure means not ready, never a 500
        problems.append(f"store not reachable: {type(exc).__name__}")
    if problems:
        return web.json_response({"status": "not ready", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of the daemon's registry."""
    state = request.app[STATE_KEY]
    body = generate_latest(state.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(state: DaemonState) -> web.Application:
    """The aiohttp application with every route of the daemon."""
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
