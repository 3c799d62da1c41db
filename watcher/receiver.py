"""A loopback webhook receiver: verifies Standard Webhooks signatures and records what arrives.

`watcher demo` uses it to print deliveries; users can run it in their own tests to check the daemon end to
end. Answers can be scripted (fail the next n requests, or answer a fixed status) to exercise retries.
"""

from __future__ import annotations

import inspect
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from watcher.clock import Clock, SystemClock
from watcher.delivery.signing import DEFAULT_TOLERANCE_S, HEADER_ID, HEADER_TIMESTAMP, decode_secret, verify

MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class ReceivedDelivery:
    """One verified request that was answered with 2xx."""

    webhook_id: str
    type: str | None  # the event type of a `standard` body; None for `slack` bodies
    body: Any  # the parsed JSON body
    timestamp: int  # the request's webhook-timestamp
    received_at: float
    headers: Mapping[str, str] = field(repr=False)  # may carry receiver API keys configured as extra headers


OnDelivery = Callable[[ReceivedDelivery], Awaitable[None] | None]


@dataclass
class _Failure:
    status: int
    retry_after: float | None


class Receiver:
    """An aiohttp server on loopback that accepts signed webhooks (401 for a bad signature)."""

    def __init__(
        self,
        secrets: Sequence[str],
        clock: Clock | None = None,
        on_delivery: OnDelivery | None = None,
        *,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
    ) -> None:
        for secret in secrets:
            decode_secret(secret)  # fail at construction, not at the first request
        self._secrets = tuple(secrets)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._on_delivery = on_delivery
        self._tolerance_s = tolerance_s
        self._failures: list[_Failure] = []
        self._fixed_status: int | None = None
        self._runner: web.AppRunner | None = None
        self.deliveries: list[ReceivedDelivery] = []
        self.attempts: Counter[str] = Counter()  # every verified request by webhook-id, answered 2xx or not
        self.rejected = 0  # requests with a missing, stale or wrong signature

    def __repr__(self) -> str:
        return f"Receiver(url={self.url!r}, deliveries={len(self.deliveries)}, rejected={self.rejected})"

    @property
    def url(self) -> str | None:
        """The URL to post to, once started."""
        if self._runner is None or not self._runner.addresses:
            return None
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}/"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host:port` (0 picks a free port) and return the URL to post to."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        url = self.url
        if url is None:
            raise RuntimeError("receiver started but reports no listening address")
        return url

    async def stop(self) -> None:
        """Stop listening; safe to call twice."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def fail_next(self, n: int, status: int = 503, retry_after: float | None = None) -> None:
        """Answer the next `n` verified requests with `status` (and a Retry-After, if given)."""
        self._failures.extend(_Failure(status, retry_after) for _ in range(n))

    def set_status(self, code: int | None) -> None:
        """Answer every verified request with `code` until called with None (after `fail_next` ones)."""
        self._fixed_status = code

    def ids(self) -> list[str]:
        """Webhook ids of the accepted deliveries, in arrival order."""
        return [d.webhook_id for d in self.deliveries]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(self._secrets, request.headers, body, self._clock.now(), self._tolerance_s):
            self.rejected += 1
            return web.json_response({"error": "invalid signature"}, status=401)
        msg_id = request.headers[HEADER_ID]
        self.attempts[msg_id] += 1
        if self._failures:
            failure = self._failures.pop(0)
            headers = {} if failure.retry_after is None else {"Retry-After": f"{failure.retry_after:g}"}
            return web.json_response({"error": "scripted failure"}, status=failure.status, headers=headers)
        if self._fixed_status is not None and not 200 <= self._fixed_status < 300:
            return web.json_response({"error": "scripted status"}, status=self._fixed_status)
        try:
            parsed = json.loads(body)
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        delivery = ReceivedDelivery(
            webhook_id=msg_id,
            type=parsed.get("type") if isinstance(parsed, dict) else None,
            body=parsed,
            timestamp=int(request.headers[HEADER_TIMESTAMP]),
            received_at=self._clock.now(),
            headers=dict(request.headers),
        )
        self.deliveries.append(delivery)
        if self._on_delivery is not None:
            outcome = self._on_delivery(delivery)
            if inspect.isawaitable(outcome):
                await outcome
        return web.json_response({"ok": True}, status=self._fixed_status or 200)
