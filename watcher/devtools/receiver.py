"""A loopback webhook receiver: it verifies Standard Webhooks signatures, records what arrives and answers
as scripted.

The one receiver that `watcher demo` prints deliveries from, `watcher bench` measures with (its sink) and
the test suites build on; users can run it in their own tests to check the daemon end to end. Answers can
be scripted (fail the next n requests, for one webhook id or any; answer a fixed status; answer slowly) to
exercise retries, and every verified request is counted, even those not answered 2xx.

Subclasses change what a request must be (`check`, `parse`), what is kept of it (`record`) and which other
routes the server has (`extra_routes`): the tests verify with their own, independent code.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from watcher.clock import Clock, SystemClock
from watcher.delivery.signing import DEFAULT_TOLERANCE_S, HEADER_ID, HEADER_TIMESTAMP, decode_secret, verify

MAX_BODY_BYTES = 1 << 20
REDIRECT_PATH = "/_redirected"  # where a scripted 3xx points: a hit there means a redirect was followed
# The request's arrival (the clock's `now`), taken before its body is read: a key of the aiohttp request.
ARRIVED: web.RequestKey[float] = web.RequestKey("arrived", float)


class SignatureError(ValueError):
    """Why a request failed verification."""


@dataclass(frozen=True)
class ReceivedDelivery:
    """One verified request that was answered with 2xx."""

    webhook_id: str
    type: str | None  # the event type of a `standard` body; None for `slack` bodies
    body: Any  # the parsed JSON body
    timestamp: int  # the request's webhook-timestamp
    received_at: float
    headers: Mapping[str, str] = field(repr=False)  # may carry receiver API keys configured as extra headers
    attempt: int = 1  # how many verified requests carried this webhook id so far, this one included


OnDelivery = Callable[[Any], Awaitable[None] | None]


@dataclass(frozen=True)
class _Scripted:
    only_id: str | None  # None: the next request, whatever its webhook id
    status: int
    headers: dict[str, str]


class Receiver:
    """An aiohttp server on loopback that accepts signed webhooks (401 for a bad signature)."""

    def __init__(
        self,
        secrets: Sequence[str],
        clock: Clock | None = None,
        on_delivery: OnDelivery | None = None,
        *,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        path: str = "/",
        ok_status: int = 200,
    ) -> None:
        for secret in secrets:
            decode_secret(secret)  # fail at construction, not at the first request
        self.secrets = tuple(secrets)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._on_delivery = on_delivery
        self._tolerance_s = tolerance_s
        self._path = path  # the path of the URL `start` returns
        self._ok_status = ok_status
        self._script: list[_Scripted] = []
        self.fixed_status: int | None = None
        self.delay_s = 0.0  # answer every verified request only after this long (a slow receiver)
        self._runner: web.AppRunner | None = None
        self._scheme = "http"
        self._changed = asyncio.Event()
        self.deliveries: list[Any] = []  # what `record` made of each accepted request, in arrival order
        self.attempts: Counter[str] = Counter()  # every verified request by webhook-id, answered 2xx or not
        self.requests: list[tuple[str, float]] = []  # (webhook-id, monotonic arrival) of verified requests
        self.rejected = 0  # requests with a missing, stale or wrong signature
        self.redirect_hits = 0
        self.in_progress = 0  # verified requests being answered right now
        self.max_in_progress = 0

    def __repr__(self) -> str:
        name, got = type(self).__name__, len(self.deliveries)
        return f"{name}(url={self.url!r}, deliveries={got}, rejected={self.rejected})"

    @property
    def url(self) -> str | None:
        """The URL to post to, once started."""
        if self._runner is None or not self._runner.addresses:
            return None
        host, port = self._runner.addresses[0][:2]
        return f"{self._scheme}://{host}:{port}{self._path}"

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Listen on `host:port` (0 picks a free port; HTTPS with `ssl_context`) and return the URL to
        post to."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", REDIRECT_PATH, self._redirected)
        self.extra_routes(app)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=ssl_context).start()
        self._scheme = "http" if ssl_context is None else "https"
        url = self.url
        if url is None:
            raise RuntimeError("receiver started but reports no listening address")
        return url

    async def stop(self) -> None:
        """Stop listening; safe to call twice."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- scripting and waiting --------------------------------------------------------------------------

    def fail_next(
        self, n: int, status: int = 503, retry_after: float | None = None, *, only_id: str | None = None
    ) -> None:
        """Answer the next `n` verified requests (for `only_id`, if given) with `status`, and a Retry-After
        if given; a 3xx points its Location at a path that counts hits: a followed redirect shows."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        if 300 <= status < 400 and self.url is not None:
            headers["Location"] = self.url.rsplit("/", 1)[0] + REDIRECT_PATH
        self._script.extend(_Scripted(only_id, status, headers) for _ in range(n))

    def set_status(self, status: int | None) -> None:
        """Answer every verified request with `status` until called with None (after `fail_next` ones)."""
        self.fixed_status = status

    def ids(self) -> list[str]:
        """Webhook ids of the accepted deliveries, in arrival order."""
        return [self.delivery_id(d) for d in self.deliveries]

    async def wait_for(self, count: int, within_s: float = 5.0) -> list[Any]:
        """Wait until at least `count` deliveries were accepted; AssertionError after `within_s` seconds."""
        deadline = time.monotonic() + within_s
        while len(self.deliveries) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"got {len(self.deliveries)} deliveries, expected {count}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue
        return list(self.deliveries)

    # -- what a subclass may change ---------------------------------------------------------------------

    def check(self, headers: Mapping[str, str], body: bytes, now: float) -> tuple[str, int]:
        """The webhook id and timestamp of a request whose signature verifies; `SignatureError` (a
        ValueError) if not."""
        if not verify(self.secrets, headers, body, now, self._tolerance_s):
            raise SignatureError("invalid signature")
        return headers[HEADER_ID], int(headers[HEADER_TIMESTAMP])

    def parse(self, body: bytes) -> Any:
        """The body as JSON; ValueError if it is not."""
        try:
            return json.loads(body)
        except ValueError:
            raise ValueError("body is not JSON") from None

    def record(self, msg_id: str, timestamp: int, body: Any, request: web.Request) -> Any:
        """What is kept of an accepted request (`request[ARRIVED]` is when it arrived)."""
        return ReceivedDelivery(
            webhook_id=msg_id,
            type=body.get("type") if isinstance(body, dict) else None,
            body=body,
            timestamp=timestamp,
            received_at=self._clock.now(),
            headers=dict(request.headers),
            attempt=self.attempts[msg_id],
        )

    def delivery_id(self, delivery: Any) -> str:
        """The webhook id of a recorded delivery."""
        return str(delivery.webhook_id)

    def extra_routes(self, app: web.Application) -> None:
        """Add routes besides the POST that receives (none here)."""

    # -- serving ----------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        request[ARRIVED] = self._clock.now()
        body = await request.read()
        try:
            msg_id, timestamp = self.check(request.headers, body, request[ARRIVED])
        except ValueError as exc:
            self.rejected += 1
            self._changed.set()
            return web.json_response({"error": str(exc)}, status=401)
        try:
            parsed = self.parse(body)
        except ValueError as exc:
            self._changed.set()
            return web.json_response({"error": str(exc)}, status=400)
        self.attempts[msg_id] += 1
        self.requests.append((msg_id, time.monotonic()))
        self._changed.set()
        self.in_progress += 1
        self.max_in_progress = max(self.max_in_progress, self.in_progress)
        try:
            return await self._answer(msg_id, timestamp, parsed, request)
        finally:
            self.in_progress -= 1

    async def _answer(self, msg_id: str, timestamp: int, parsed: Any, request: web.Request) -> web.Response:
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        scripted = next((i for i, s in enumerate(self._script) if s.only_id in (None, msg_id)), None)
        if scripted is not None:
            answer = self._script.pop(scripted)
            return web.json_response({"error": "scripted"}, status=answer.status, headers=answer.headers)
        if self.fixed_status is not None and not 200 <= self.fixed_status < 300:
            return web.json_response({"error": "scripted status"}, status=self.fixed_status)
        delivery = self.record(msg_id, timestamp, parsed, request)
        self.deliveries.append(delivery)
        self._changed.set()
        if self._on_delivery is not None:
            outcome = self._on_delivery(delivery)
            if inspect.isawaitable(outcome):
                await outcome
        status = self.fixed_status or self._ok_status
        return (
            web.Response(status=status) if status == 204 else web.json_response({"ok": True}, status=status)
        )

    async def _redirected(self, request: web.Request) -> web.Response:
        self.redirect_hits += 1
        return web.Response(status=200, text="a redirect was followed")
