"""Errors are problem+json: garbage bodies, oversized bodies, tokens, unknown routes and handler failures."""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from structlog.testing import capture_logs

from tests.api.conftest import Running, StartDaemon
from watcher.http.problems import token_matches
from watcher.http.v1.routes import ROUTES
from watcher.models import Watch
from watcher.store.memory import MemoryStore

JOB = "5135bfe3-b2c7-41f3-a44f-f4b58e7384df"
PROBLEM = "application/problem+json"
FIVE_MIB = 5 * 1024 * 1024

_MANY = json.dumps({f"k{i}": "v" for i in range(33)})
GARBAGE: list[tuple[str, bytes, str | None]] = [
    ("null", b"null", "body"),
    ("number", b"42", "body"),
    ("float", b"-1.5e3", "body"),
    ("string", b'"5135bfe3-b2c7-41f3-a44f-f4b58e7384df"', "body"),
    ("true", b"true", "body"),
    ("list", b'[{"job_id": "5135bfe3-b2c7-41f3-a44f-f4b58e7384df"}]', "body"),
    ("empty object", b"{}", "job_id"),
    ("job_id number", b'{"job_id": 5135}', "job_id"),
    ("job_id null", b'{"job_id": null}', "job_id"),
    ("job_id list", b'{"job_id": ["a"]}', "job_id"),
    ("job_id not uuid", b'{"job_id": "5135bfe3"}', "job_id"),
    ("job_id braces", b'{"job_id": "{5135bfe3-b2c7-41f3-a44f-f4b58e7384df}"}', "job_id"),
    ("labels list", f'{{"job_id": "{JOB}", "labels": ["a"]}}'.encode(), "labels"),
    ("label value number", f'{{"job_id": "{JOB}", "labels": {{"a": 1}}}}'.encode(), "labels.a"),
    ("label value object", f'{{"job_id": "{JOB}", "labels": {{"a": {{"b": "c"}}}}}}'.encode(), "labels.a"),
    ("label key", f'{{"job_id": "{JOB}", "labels": {{"a b": "c"}}}}'.encode(), "labels.a b"),
    ("label too long", f'{{"job_id": "{JOB}", "labels": {{"a": "{"x" * 257}"}}}}'.encode(), "labels.a"),
    ("too many labels", f'{{"job_id": "{JOB}", "labels": {_MANY}}}'.encode(), "labels"),
    ("webhooks string", f'{{"job_id": "{JOB}", "webhooks": "ops"}}'.encode(), "webhooks"),
    ("webhook unknown", f'{{"job_id": "{JOB}", "webhooks": ["ops", "nope"]}}'.encode(), "webhooks[1]"),
    ("webhook number", f'{{"job_id": "{JOB}", "webhooks": [1]}}'.encode(), "webhooks[0]"),
    ("workspace unknown", f'{{"job_id": "{JOB}", "workspace": "elsewhere"}}'.encode(), "workspace"),
    ("workspace number", f'{{"job_id": "{JOB}", "workspace": 1}}'.encode(), "workspace"),
    ("max_watch_s string", f'{{"job_id": "{JOB}", "max_watch_s": "60"}}'.encode(), "max_watch_s"),
    ("max_watch_s zero", f'{{"job_id": "{JOB}", "max_watch_s": 0}}'.encode(), "max_watch_s"),
    ("max_watch_s bool", f'{{"job_id": "{JOB}", "max_watch_s": true}}'.encode(), "max_watch_s"),
    ("max_watch_s huge", f'{{"job_id": "{JOB}", "max_watch_s": 1e308}}'.encode(), "max_watch_s"),
    ("NaN", f'{{"job_id": "{JOB}", "max_watch_s": NaN}}'.encode(), "body"),
    ("unknown field", f'{{"job_id": "{JOB}", "url": "http://evil"}}'.encode(), "url"),
    ("malformed", b'{"job_id": ', "body"),
    ("trailing garbage", f'{{"job_id": "{JOB}"}} x'.encode(), "body"),
    ("empty body", b"", "body"),
    ("not utf-8", b'{"job_id": "\xff\xfe"}', "body"),
    ("deep nesting", b"[" * 30_000 + b"]" * 30_000, "body"),
]


@pytest.fixture
async def daemon(start_daemon: StartDaemon) -> Running:
    """A daemon with a token."""
    return await start_daemon(token="the-right-token")


async def _problem(d: Running, method: str, path: str, **kw: object) -> tuple[int, dict[str, object]]:
    async with d.http.request(method, d.base + path, **kw) as r:  # type: ignore[arg-type]
        assert r.content_type == PROBLEM, (r.status, await r.text())
        body = await r.json(content_type=PROBLEM)
        assert body["status"] == r.status and body["title"] and body["type"] == "about:blank"
        assert "Traceback" not in await r.text()
        return r.status, body


@pytest.mark.parametrize(("raw", "field"), [(g[1], g[2]) for g in GARBAGE], ids=[g[0] for g in GARBAGE])
async def test_garbage_bodies_get_400_naming_the_field(daemon: Running, raw: bytes, field: str) -> None:
    """Every JSON type in the wrong place, and what is not JSON at all, is a 400 naming the field."""
    headers = {**daemon.auth(), "Content-Type": "application/json"}
    status, body = await _problem(daemon, "POST", "/v1/watches", data=raw, headers=headers)
    assert status == 400
    fields = [e["field"] for e in body["errors"]]  # type: ignore[attr-defined]
    assert field in fields
    status, body = await _problem(daemon, "POST", "/v1/watches/batch", data=raw, headers=headers)
    assert status == 400
    assert (await daemon.call("GET", "/v1/watches"))[1]["watches"] == []


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_wrong_content_type_is_400(daemon: Running, ctype: str | None) -> None:
    """A JSON body sent as another type is refused with 400 naming Content-Type (not guessed at)."""
    headers = {**daemon.auth(), **({"Content-Type": ctype} if ctype else {})}
    status, body = await _problem(
        daemon, "POST", "/v1/watches", data=f'{{"job_id": "{JOB}"}}', headers=headers
    )
    assert status == 400
    assert body["errors"] == [{"field": "Content-Type", "message": body["errors"][0]["message"]}]  # type: ignore[index]


async def test_batch_items_of_every_type_are_invalid_items(daemon: Running) -> None:
    """Inside a batch, each garbage item is its own invalid result; the good one is registered."""
    items: list[object] = [None, 1, "x", [], True, {"job_id": JOB}, {"job_id": JOB, "labels": 3}]
    status, body = await daemon.call("POST", "/v1/watches/batch", json={"watches": items})
    assert status == 200
    assert [r["result"] for r in body["results"]] == ["invalid"] * 5 + ["created", "invalid"]
    bad: object
    for bad in ({"watches": []}, {"watches": {}}, {"items": []}, {"watches": None}):
        assert (await daemon.call("POST", "/v1/watches/batch", json=bad))[0] == 400


async def test_five_mib_body_gets_413_quickly_and_the_daemon_keeps_serving(daemon: Running) -> None:
    """Declared or chunked, a 5 MiB body is refused after at most max_body_bytes are read."""
    headers = {**daemon.auth(), "Content-Type": "application/json"}
    started = time.monotonic()
    status, body = await _problem(
        daemon, "POST", "/v1/watches", data=io.BytesIO(b"[" * FIVE_MIB), headers=headers
    )
    assert status == 413 and "max_body_bytes" in str(body["detail"])

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(FIVE_MIB // 65536):
            yield b" " * 65536

    try:
        status, _ = await _problem(daemon, "POST", "/v1/watches/batch", data=chunks(), headers=headers)
        assert status == 413
    except aiohttp.ClientError:
        pass  # the server may close while the client still writes; what matters is below
    assert time.monotonic() - started < 10
    for _ in range(3):
        assert (await daemon.call("GET", "/v1/watches"))[0] == 200
        async with daemon.http.get(daemon.base + "/healthz") as r:
            assert r.status == 200
    assert (await daemon.call("POST", "/v1/watches", json={"job_id": JOB}))[0] == 201


def _concrete(path: str) -> str:
    return path.replace("{job_id}", JOB).replace("{delivery_id}", "1").replace("{name}", "nope")


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "Bearer wrong-token",
        "Bearer the-right-token-",
        "bearer THE-RIGHT-TOKEN",
        "Basic dTpw",
        "Bearer ",
    ],
)
async def test_every_v1_route_needs_the_token(daemon: Running, auth: str | None) -> None:
    """No token, a wrong one, or another scheme: 401 with WWW-Authenticate on every /v1 route."""
    headers = {"Authorization": auth} if auth else {}
    for r in [*ROUTES, *(type(ROUTES[0])("GET", "/v1/unknown", ROUTES[0].handler, "", {}),)]:
        async with daemon.http.request(
            r.method, daemon.base + _concrete(r.path), headers=headers, json={}
        ) as resp:
            assert resp.status == 401, (r.method, r.path)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert resp.content_type == PROBLEM
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        async with daemon.http.get(daemon.base + path, headers=headers) as resp:
            assert resp.status == 200, path


async def test_the_right_token_passes_on_every_route(daemon: Running) -> None:
    """With the token no route answers 401 (404 for unknown ids is fine)."""
    for r in ROUTES:
        bodies = {"/v1/watches": {"job_id": JOB}, "/v1/deliveries/retry": {}}
        kw = {"json": bodies.get(r.path, {"watches": [{"job_id": JOB}]})}
        async with daemon.http.request(
            r.method, daemon.base + _concrete(r.path), headers=daemon.auth(), **kw
        ) as resp:
            assert resp.status in (200, 201, 204, 404), (r.method, r.path, resp.status)


def test_token_matches_compares_every_token() -> None:
    """A token matches if it equals any configured one, byte for byte."""
    assert token_matches("b", ["a", "b"])
    assert not token_matches("B", ["a", "b"])
    assert not token_matches(None, ["a"])
    assert not token_matches("a", [])
    assert not token_matches("\udcff", ["a"])


async def test_unknown_routes_and_methods_are_problems(daemon: Running) -> None:
    """404 and 405 are problem+json too; 405 keeps its Allow header; bad ids are named."""
    status, _ = await _problem(daemon, "GET", "/nothing-here")
    assert status == 404
    async with daemon.http.patch(daemon.base + "/v1/watches", headers=daemon.auth()) as r:
        assert r.status == 405 and r.content_type == PROBLEM and "POST" in r.headers["Allow"]
    status, body = await _problem(daemon, "GET", "/v1/watches/not-a-uuid", headers=daemon.auth())
    assert status == 400 and body["errors"] == [
        {"field": "job_id", "message": "must be a UUID like 5135bfe3-b2c7-41f3-a44f-f4b58e7384df"}
    ]
    for query in (
        "status=a%01b",
        "status=" + "x" * 65,
        "limit=0",
        "limit=x",
        "limit=100000",
        "label=nocolon",
    ):
        status, body = await _problem(daemon, "GET", f"/v1/watches?{query}", headers=daemon.auth())
        assert status == 400 and body["errors"][0]["field"] == query.split("=")[0]  # type: ignore[index]
    for query in ("state=lost", "cursor=-1", "cursor=abc", "cursor=99999999999999999999"):
        status, _ = await _problem(daemon, "GET", f"/v1/deliveries?{query}", headers=daemon.auth())
        assert status == 400


class _BrokenStore(MemoryStore):
    """A real in-memory store whose get_watch fails, as a bug or a broken disk would."""

    async def get_watch(self, job_id: str) -> Watch | None:
        raise RuntimeError("secret internal detail")


async def test_unexpected_failure_is_a_bare_500_and_logged(start_daemon: StartDaemon) -> None:
    """A handler failure answers 500 without details; the log has the event and the exception type."""
    d = await start_daemon(store=_BrokenStore())
    with capture_logs() as logs:
        status, body = await _problem(d, "GET", f"/v1/watches/{JOB}")
    assert status == 500
    assert "secret" not in str(body)
    failed = [e for e in logs if e["event"] == "api.handler_failed"]
    assert failed and failed[0]["error"] == "RuntimeError"
    async with d.http.get(d.base + "/healthz") as r:
        assert r.status == 200
