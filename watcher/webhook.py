"""Webhook transport: what a target is, how a body is rendered, and one signed POST classified (SPEC §6).

The sender only reports what happened (success, retryable with a reason, dead); attempt counting, backoff,
metrics and logging belong to the delivery policy in `watcher.delivery`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from watcher import __version__, strictjson
from watcher.clock import Clock, SystemClock, parse_retry_after
from watcher.models import Delivery, Event
from watcher.signing import HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, sign

USER_AGENT = f"job-watcher/{__version__}"
MAX_RESPONSE_BYTES = 4096  # enough to drain a typical acknowledgement; receivers' bodies are never used
_MAX_TEXT_DETAIL = 300


def _url_origin(url: str) -> str:
    # Slack-style webhook URLs carry their secret in the path, so only scheme and host are ever shown.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "") + "/…"


@dataclass(frozen=True)
class WebhookTarget:
    """One configured webhook; the repr hides its secrets, header values and URL path."""

    name: str
    url: str = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)
    events: frozenset[str]
    format: str = "standard"  # "standard" | "slack"
    timeout_s: float = 10.0
    max_attempts: int = 10
    retry_initial_s: float = 1.0
    retry_max_s: float = 300.0
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return (
            f"WebhookTarget(name={self.name!r}, url={_url_origin(self.url)!r}, "
            f"secrets=<{len(self.secrets)} hidden>, "
            f"events={sorted(self.events)!r}, format={self.format!r}, timeout_s={self.timeout_s}, "
            f"max_attempts={self.max_attempts}, retry_initial_s={self.retry_initial_s}, "
            f"retry_max_s={self.retry_max_s}, headers={sorted(self.headers)!r})"
        )


# -- bodies -----------------------------------------------------------------------------------------------

_SLACK_ICONS = {
    "success": ":white_check_mark:",
    "failed": ":x:",
    "expired": ":hourglass:",
    "missing": ":ghost:",
}


def _one_line(value: Any, limit: int = _MAX_TEXT_DETAIL) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_text(event: Event) -> str:
    """One readable line describing `event`, e.g. ':x: job 5135bfe3… (customer.createBatch) failed …'."""
    data: dict[str, Any] = event.payload.get("data") or {}
    job: dict[str, Any] = data.get("job") or {}
    kind = event.type.removeprefix("job.")
    name = job.get("name")
    subject = f"job {event.job_id[:8]}…" + (f" ({_one_line(name, 80)})" if name else "")
    where = f"in workspace {event.workspace}"
    if kind == "success":
        text = f"{subject} succeeded {where}"
    elif kind == "failed":
        error = job.get("error")
        text = f"{subject} failed {where}" + (f": {_one_line(error)}" if error else "")
    elif kind in ("expired", "missing"):
        reason = data.get("reason")
        text = f"{subject} {kind} {where}" + (f": {_one_line(reason)}" if reason else "")
    else:
        text = f"{subject} is now {kind} {where}"
    labels = data.get("labels") or {}
    if labels:
        text += " [" + ", ".join(f"{k}={_one_line(v, 80)}" for k, v in sorted(labels.items())) + "]"
    return f"{_SLACK_ICONS.get(kind, ':information_source:')} {text}"


def render_body(target: WebhookTarget, event: Event) -> bytes:
    """The exact bytes POSTed for `event`; the same event always renders to the same bytes."""
    doc: Any = {"text": slack_text(event)} if target.format == "slack" else event.payload
    # Sorted keys make the bytes (and so the signature) independent of how the payload was stored. Strict
    # JSON (RFC 8259) only: a payload stored before bodies were sanitised may still hold a NaN.
    return strictjson.dumps(doc, sort_keys=True).encode()


# -- sending ----------------------------------------------------------------------------------------------


class SendKind(StrEnum):
    """How one attempt ended, as the transport sees it."""

    SUCCESS = "success"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True)
class SendResult:
    """What one POST observed; `detail` is a short reason that is safe to log and store."""

    kind: SendKind
    status_code: int | None
    retry_after_s: float | None
    detail: str
    duration_s: float


class WebhookSender:
    """Signs and POSTs one delivery and classifies the answer; it never retries by itself."""

    def __init__(self, session: aiohttp.ClientSession, clock: Clock | None = None) -> None:
        self._session = session
        self._clock: Clock = clock if clock is not None else SystemClock()

    def build_headers(self, target: WebhookTarget, delivery: Delivery, body: bytes) -> dict[str, str]:
        """The request headers of one attempt, signature included (timestamp is taken now)."""
        timestamp = int(self._clock.now())
        headers = dict(target.headers)
        # Our own headers win: a configured extra header must not be able to replace the signature.
        headers.update(
            {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                HEADER_ID: delivery.event.id,
                HEADER_TIMESTAMP: str(timestamp),
                HEADER_SIGNATURE: sign(target.secrets, delivery.event.id, timestamp, body),
            }
        )
        return headers

    async def send(self, target: WebhookTarget, delivery: Delivery) -> SendResult:
        """POST `delivery` to `target` once and say whether it succeeded, should be retried or is dead."""
        body = render_body(target, delivery.event)
        headers = self.build_headers(target, delivery, body)
        start = self._clock.monotonic()
        timeout = aiohttp.ClientTimeout(total=target.timeout_s)
        try:
            async with self._session.post(
                target.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                # Drain a little so small answers keep the connection reusable; the content is not used.
                await resp.content.read(MAX_RESPONSE_BYTES)
                status = resp.status
                reason = resp.reason or ""
                retry_after_header = resp.headers.get("Retry-After")
        except TimeoutError:
            return SendResult(SendKind.RETRY, None, None, "timeout", self._clock.monotonic() - start)
        except (aiohttp.ClientError, OSError) as exc:
            # The exception text may name the URL (whose path can be a secret), so only its type is kept.
            detail = f"connection error: {type(exc).__name__}"
            return SendResult(SendKind.RETRY, None, None, detail, self._clock.monotonic() - start)
        duration = self._clock.monotonic() - start
        return classify(status, reason, retry_after_header, self._clock.now(), duration)


def classify(status: int, reason: str, retry_after: str | None, now: float, duration_s: float) -> SendResult:
    """Turn an HTTP answer into a `SendResult`: 2xx success, 410 dead, anything else retryable."""
    label = f"HTTP {status}"
    if 200 <= status < 300:
        return SendResult(SendKind.SUCCESS, status, None, label, duration_s)
    if status == 410:
        return SendResult(SendKind.DEAD, status, None, f"{label} Gone", duration_s)
    if 300 <= status < 400:
        return SendResult(SendKind.RETRY, status, None, f"{label} redirect not followed", duration_s)
    detail = f"{label} {_one_line(reason, 60)}".rstrip()
    return SendResult(SendKind.RETRY, status, parse_retry_after(retry_after, now), detail, duration_s)
