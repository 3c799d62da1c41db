"""Webhook transport: one signed POST of a delivery's body, its answer classified (SPEC §6).

The sender only reports what happened (success, retryable with a reason, dead); attempt counting, backoff,
metrics and logging belong to the retry policy (`watcher.delivery.retry`) and the worker.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from watcher import __version__
from watcher.clock import Clock, SystemClock, parse_retry_after
from watcher.delivery.bodies import message_id, one_line, render, render_delivery
from watcher.delivery.formats import RenderError
from watcher.delivery.guard import find_blocked
from watcher.delivery.signing import HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, sign
from watcher.delivery.target import WebhookTarget
from watcher.models import DeadReason, Delivery, DeliveryOutcome

USER_AGENT = f"job-watcher/{__version__}"
MAX_RESPONSE_BYTES = 4096  # enough to drain a typical acknowledgement; receivers' bodies are never used
# Once the status line and headers are in, the answer is decided: the body is only drained so the connection
# can be reused, for at most this long, then dropped with its connection (a 2xx whose body stalls is still
# delivered, issue 14).
DRAIN_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class SendResult:
    """What one POST observed; `detail` is a short reason that is safe to log and store."""

    kind: DeliveryOutcome
    status_code: int | None
    retry_after_s: float | None
    detail: str
    duration_s: float
    dead_reason: DeadReason | None = None  # why, when `kind` is DEAD


class WebhookSender:
    """Signs and POSTs one delivery and classifies the answer; it never retries by itself."""

    def __init__(self, session: aiohttp.ClientSession, clock: Clock | None = None) -> None:
        self._session = session
        self._clock: Clock = clock if clock is not None else SystemClock()

    def build_headers(
        self, target: WebhookTarget, delivery: Delivery, body: bytes, content_type: str = "application/json"
    ) -> dict[str, str]:
        """The request headers of one attempt, signature included when the target has a secret (the
        timestamp is taken now)."""
        timestamp = int(self._clock.now())
        headers = dict(target.headers)
        # Our own headers win: a configured extra header must not be able to replace the signature.
        headers.update(
            {
                "content-type": content_type,
                "user-agent": USER_AGENT,
                HEADER_ID: message_id(delivery),
                HEADER_TIMESTAMP: str(timestamp),
            }
        )
        if (
            target.secrets
        ):  # only `standard` requires a secret: a Slack or Alertmanager receiver cannot verify
            headers[HEADER_SIGNATURE] = sign(target.secrets, headers[HEADER_ID], timestamp, body)
        else:
            headers.pop(HEADER_SIGNATURE, None)
        return headers

    async def send(self, target: WebhookTarget, delivery: Delivery) -> SendResult:
        """POST `delivery` to `target` once and say whether it succeeded, should be retried or is dead."""
        start = self._clock.monotonic()
        try:
            if target.format == "template":
                # An operator's template may run up to its time bound: off the event loop, so polls and the
                # API go on meanwhile (the sandbox's step counter is per thread, so it holds there too).
                rendered = await asyncio.to_thread(render, target, delivery.event)
            else:
                rendered = render_delivery(target, delivery)
        except RenderError as exc:
            # The same event through the same renderer fails the same way: dead at once, with the reason.
            detail = f"render failed: {exc.reason}"
            duration = self._clock.monotonic() - start
            return SendResult(DeliveryOutcome.DEAD, None, None, detail, duration, DeadReason.RENDER_FAILED)
        body = rendered.body
        headers = self.build_headers(target, delivery, body, rendered.content_type)
        start = self._clock.monotonic()
        timeout = aiohttp.ClientTimeout(total=target.timeout_s)
        try:
            async with self._session.post(
                target.url,
                data=body,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
                ssl=True if target.ssl_context is None else target.ssl_context,
                **({} if target.proxy is None else target.proxy.request_kwargs()),
            ) as resp:
                status = resp.status
                reason = resp.reason or ""
                retry_after_header = resp.headers.get("Retry-After")
                if not await _drain(resp):
                    resp.close()  # a body that stalls or breaks: drop the connection, keep the answer
        except TimeoutError:
            return SendResult(DeliveryOutcome.RETRY, None, None, "timeout", self._clock.monotonic() - start)
        except (aiohttp.ClientError, OSError) as exc:
            blocked = find_blocked(exc)
            if blocked is not None:
                # Its text names the host and the address it resolved to, never the URL's path or query.
                detail = f"blocked address: {blocked.strerror}"
                duration = self._clock.monotonic() - start
                return SendResult(
                    DeliveryOutcome.DEAD, None, None, detail, duration, DeadReason.BLOCKED_ADDRESS
                )
            # The exception text may name the URL (whose path can be a secret), so only its type is kept.
            detail = f"connection error: {type(exc).__name__}"
            if isinstance(exc, aiohttp.ClientConnectorCertificateError):
                detail = "TLS: the receiver's certificate is not trusted (see ca_file)"
            elif isinstance(exc, aiohttp.ClientSSLError):
                detail = f"TLS handshake failed: {type(exc).__name__}"
            return SendResult(DeliveryOutcome.RETRY, None, None, detail, self._clock.monotonic() - start)
        duration = self._clock.monotonic() - start
        return classify(status, reason, retry_after_header, self._clock.now(), duration)


async def _drain(resp: aiohttp.ClientResponse) -> bool:
    """Read a little of the body so a small answer keeps the connection reusable; False if it stalled."""
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            await resp.content.read(MAX_RESPONSE_BYTES)
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False
    return True


def classify(status: int, reason: str, retry_after: str | None, now: float, duration_s: float) -> SendResult:
    """Turn an HTTP answer into a `SendResult`: 2xx success, 410 dead, anything else retryable."""
    label = f"HTTP {status}"
    if 200 <= status < 300:
        return SendResult(DeliveryOutcome.SUCCESS, status, None, label, duration_s)
    if status == 410:
        return SendResult(DeliveryOutcome.DEAD, status, None, f"{label} Gone", duration_s, DeadReason.GONE)
    if 300 <= status < 400:
        return SendResult(DeliveryOutcome.RETRY, status, None, f"{label} redirect not followed", duration_s)
    detail = f"{label} {one_line(reason, 60)}".rstrip()
    return SendResult(DeliveryOutcome.RETRY, status, parse_retry_after(retry_after, now), detail, duration_s)
