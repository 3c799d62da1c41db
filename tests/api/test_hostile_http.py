"""Hostile HTTP: requests aiohttp cannot parse, methods a route lacks, and a store that is out (SPEC §16).

The raw-socket tests speak bytes to the server, because a client library would refuse to send them; each
sends a bearer token and checks that no byte of it comes back or reaches the log.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from structlog.testing import capture_logs

from tests.api.conftest import Running, StartDaemon
from tests.support.ports import free_port
from watcher.errors import StoreUnavailable
from watcher.http.app import build_app
from watcher.http.server import ApiRunner
from watcher.http.v1.routes import ROUTES
from watcher.store.memory import MemoryStore

PROBLEM = "application/problem+json"
JOB = "5135bfe3-b2c7-41f3-a44f-f4b58e7384df"
SECRET = "SeCrEtToKeN"


async def _exchange(port: int, raw: bytes, within_s: float = 10.0) -> bytes:
    """Send `raw` on a new connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(within_s):
            return await reader.read(-1)
    finally:
        writer.close()


def _parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


_LONG = "x" * 9000
UNPARSEABLE: list[tuple[str, bytes]] = [
    ("long header", f"GET /v1/watches HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {SECRET}{_LONG}\r\n\r\n"),
    ("long path", f"GET /v1/watches?token={SECRET}{_LONG} HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("long header name", f"GET / HTTP/1.1\r\nHost: a\r\nX-{SECRET}{_LONG}: 1\r\n\r\n"),
    ("control char", f"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {SECRET}\x01\r\n\r\n"),
    ("bad header", f"GET / HTTP/1.1\r\nHost: a\r\n{SECRET} no colon\r\n\r\n"),
    ("bad method", f"G{SECRET}( / HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("bad version", f"GET / HTTP/{SECRET}\r\nHost: a\r\n\r\n"),
    ("many headers", "GET / HTTP/1.1\r\n" + "".join(f"X-{i}: {SECRET}\r\n" for i in range(200)) + "\r\n"),
    (
        "bad chunk",
        f"POST /v1/watches HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz{SECRET}\r\n",
    ),
    ("tls", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + SECRET),
]


@pytest.fixture
async def api_port(start_daemon: StartDaemon) -> AsyncIterator[tuple[Running, int]]:
    """The daemon's own app and state, served through `ApiRunner` on a port of its own."""
    d = await start_daemon(token=SECRET)
    assert d.daemon.state is not None
    runner = ApiRunner(build_app(d.daemon.state), access_log=None, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield d, port
    await runner.cleanup()


@pytest.mark.parametrize("raw", [c[1] for c in UNPARSEABLE], ids=[c[0] for c in UNPARSEABLE])
async def test_unparseable_requests_get_a_problem_that_echoes_nothing(
    api_port: tuple[Running, int], raw: str
) -> None:
    """What aiohttp cannot parse is a problem+json 400; neither the answer nor the log repeats a byte."""
    _, port = api_port
    with capture_logs() as logs:
        answer = await _exchange(port, raw.encode("latin-1"))
    status, headers, body = _parse(answer)
    assert status == 400, answer[:300]
    assert headers["content-type"].startswith(PROBLEM)
    problem = json.loads(body)
    assert problem["status"] == 400 and problem["title"] == "Bad Request" and problem["detail"]
    assert SECRET.lower() not in answer.decode("latin-1").lower()
    assert logs and all(SECRET.lower() not in str(e).lower() for e in logs)
    assert any(e["event"] == "api.bad_request" for e in logs)


async def test_the_server_keeps_serving_after_unparseable_requests(api_port: tuple[Running, int]) -> None:
    """Garbage on some connections leaves the others, and new ones, working."""
    d, port = api_port
    async with aiohttp.ClientSession() as http:
        for _, raw in UNPARSEABLE:
            await _exchange(port, raw.encode("latin-1"))
            async with http.get(f"http://127.0.0.1:{port}/v1/watches", headers=d.auth()) as r:
                assert r.status == 200


async def test_the_daemon_itself_serves_through_api_runner(start_daemon: StartDaemon) -> None:
    """The daemon's own port answers an over-long header with problem+json, not aiohttp's text."""
    d = await start_daemon(token=SECRET)
    port = int(d.base.rsplit(":", 1)[1])
    status, headers, _ = _parse(await _exchange(port, UNPARSEABLE[0][1].encode()))
    assert status == 400 and headers["content-type"].startswith(PROBLEM)


def test_aiohttp_still_has_the_hooks_api_server_uses() -> None:
    """`watcher.http.server` overrides `RequestHandler.handle_error` and reads `Server._kwargs`: an upgrade
    that renames either must fail here, with this message, rather than quietly echo request bytes again."""
    params = list(inspect.signature(RequestHandler.handle_error).parameters)
    assert params == ["self", "request", "status", "exc", "message"], (aiohttp.__version__, params)
    assert "_make_server" in vars(web.AppRunner), aiohttp.__version__

    async def build() -> dict[str, Any]:
        return dict(web.Server(lambda r: None, max_field_size=1)._kwargs)  # type: ignore[arg-type,return-value]

    assert asyncio.run(build()) == {"max_field_size": 1}, aiohttp.__version__


async def test_error_answers_quote_nothing_from_the_request(start_daemon: StartDaemon) -> None:
    """404, 405 and a wrong Content-Type name the fault without repeating the path, method or header."""
    d = await start_daemon(token=SECRET)
    for method, path, headers in [
        ("GET", f"/{SECRET}", {}),
        ("GET", f"/v1/{SECRET}", d.auth()),
        ("PATCH", f"/v1/watches?{SECRET}", d.auth()),
        ("POST", "/v1/watches", {**d.auth(), "Content-Type": f"text/{SECRET}"}),
    ]:
        async with d.http.request(method, d.base + path, headers=headers, data=b"{}") as r:
            text = await r.text()
            assert r.status in (400, 404, 405) and r.content_type == PROBLEM, (path, r.status)
            assert SECRET not in text and SECRET not in str(r.headers), (path, text)


# -- Allow ------------------------------------------------------------------------------------------------


async def test_allow_lists_exactly_the_documented_methods(start_daemon: StartDaemon) -> None:
    """Every other method on every documented path is a 405 whose Allow names that path's methods."""
    d = await start_daemon(token=SECRET)
    document = (await d.call("GET", "/openapi.json"))[1]
    for template, operations in document["paths"].items():
        path = template.replace("{job_id}", JOB).replace("{delivery_id}", "1").replace("{name}", "ops")
        documented = {m.upper() for m in operations}
        for method in {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} - documented:
            async with d.http.request(method, d.base + path, headers=d.auth()) as r:
                assert r.status == 405, (method, template, r.status)
                assert r.content_type == PROBLEM
                allowed = set(r.headers["Allow"].split(",")) - {"HEAD"}
                assert allowed == documented, (method, template, r.headers["Allow"])


async def test_batch_is_not_a_job_id(start_daemon: StartDaemon) -> None:
    """GET and DELETE on /v1/watches/batch are 405 (the route is POST only), not a 400 about a UUID."""
    d = await start_daemon(token=SECRET)
    for method in ("GET", "DELETE", "OPTIONS"):
        async with d.http.request(method, d.base + "/v1/watches/batch", headers=d.auth()) as r:
            assert (r.status, r.headers.get("Allow")) == (405, "POST"), method


# -- store outage -----------------------------------------------------------------------------------------


class _OutageStore(MemoryStore):
    """The in-memory store, except that while `out` is set everything the API calls raises
    StoreUnavailable, as the real stores do when their database is unreachable or their disk is full."""

    out = False


_API_CALLS = (
    "register",
    "delete_watch",
    "get_watch",
    "list_watches",
    "events_for",
    "list_deliveries",
    "get_delivery",
    "retry_delivery",
    "recent_events",
    "counts",
    "watch_counts",
)


def _failing(name: str) -> Callable[..., Awaitable[Any]]:
    async def call(self: _OutageStore, *args: Any, **kwargs: Any) -> Any:
        if self.out:
            raise StoreUnavailable("store at 127.0.0.1:5432/test: connection refused")
        return await getattr(MemoryStore, name)(self, *args, **kwargs)

    return call


for _name in _API_CALLS:
    setattr(_OutageStore, _name, _failing(_name))


async def _ping(self: _OutageStore) -> bool:
    return not self.out


_OutageStore.ping = _ping  # type: ignore[method-assign]


def _request(path: str) -> dict[str, Any]:
    if path == "/v1/watches":
        return {"json": {"job_id": JOB}}
    if path == "/v1/deliveries/retry":
        return {"json": {}}
    return {"json": {"watches": [{"job_id": JOB}]}} if path.endswith("/batch") else {}


async def test_a_store_outage_is_a_503_with_retry_after_on_every_route(start_daemon: StartDaemon) -> None:
    """Out: every /v1 route that reads the store answers 503 problem+json with Retry-After; back: they all
    work again. `/v1/job-types` answers from what this replica learnt, in memory, and a webhook test sends
    without the store: nothing to wait for."""
    store = _OutageStore()
    routes = [r for r in ROUTES if r.path not in ("/v1/job-types", "/v1/webhooks/{name}/test")]
    d = await start_daemon(token=SECRET, store=store)
    assert (await d.call("POST", "/v1/watches", json={"job_id": JOB}))[0] == 201
    store.out = True
    with capture_logs() as logs:
        for r in routes:
            path = r.path.replace("{job_id}", JOB).replace("{delivery_id}", "1")
            async with d.http.request(r.method, d.base + path, headers=d.auth(), **_request(r.path)) as resp:
                text = await resp.text()
                assert resp.status == 503, (r.method, r.path, resp.status, text)
                assert resp.content_type == PROBLEM and resp.headers["Retry-After"] == "5"
                problem = json.loads(text)
                assert problem["status"] == 503 and "5432" not in text and "refused" not in text
    # Changing routes are audited too; the daemon's own loops (a watch-list reload) may log meanwhile.
    events = [e["event"] for e in logs if e["event"].startswith("api.") and e["event"] != "api.audit"]
    assert events == ["api.store_unavailable"] * len(routes)
    assert (await d.call("GET", "/v1/job-types"))[0] == 200
    assert all("exc_info" not in e and "exception" not in e for e in logs)
    async with d.http.get(d.base + "/readyz") as resp:
        assert resp.status == 503
    async with d.http.get(d.base + "/", headers=d.auth()) as resp:
        assert resp.status == 503 and resp.content_type == PROBLEM
    async with d.http.get(d.base + "/healthz") as resp:
        assert resp.status == 200
    store.out = False
    assert (await d.call("GET", f"/v1/watches/{JOB}"))[0] == 200
    assert (await d.call("POST", "/v1/watches/batch", json={"watches": [{"job_id": JOB}]}))[0] == 200
    async with d.http.get(d.base + "/readyz") as resp:
        assert resp.status == 200
