"""The upstream client: one `GET {base_url}/jobs/{id}` per poll, every outcome classified, nothing raised.

Transports report, policies decide: this module never retries, sleeps or counts. It turns what the
Oration API answered (or failed to answer) into a `PollResult` and leaves backoff, metrics and verdicts
to the scheduler. It is the daemon's hot path, so everything that does not depend on the job id (URL
prefix, headers, timeout) is built once per workspace.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from yarl import URL

from watcher.clock import Clock, SystemClock, parse_retry_after
from watcher.models import KNOWN_STATUSES, Credentials, PollOutcome, PollResult
from watcher.proxies import Proxy
from watcher.statuses import GrownStatusLog, is_grown
from watcher.strictjson import MAX_DEPTH, TooDeep, parse_body

# `[upstream] max_body_bytes`: a job body is a few hundred bytes; anything near the cap is not a job and
# is not worth buffering.
DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024
_MAX_DETAIL: Final = 200
_REQUIRED_FIELDS: Final = ("id", "status", "updatedAt")
# `updatedAt` goes into the event id and a text column: a timestamp is short and printable.
_MAX_UPDATED_AT: Final = 64


class _Workspace:
    """Everything about a workspace that is the same for every poll, built once."""

    __slots__ = ("headers", "prefix", "secrets", "transport")

    def __init__(
        self, creds: Credentials, proxy: Proxy | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        # In yarl's encoded form, so a request URL is this plus a quoted id, taken as already encoded.
        self.prefix = str(URL(creds.base_url.rstrip("/") + "/jobs/"))
        headers = {
            "Authorization": f"Bearer {creds.token}",
            "x-api-key": creds.api_key,
            "x-workspace-slug": creds.slug,
            "Accept": "application/json",
        }
        if creds.workspace_id:
            headers["x-workspace-id"] = creds.workspace_id
        self.headers: Mapping[str, str] = headers
        self.secrets = tuple(s for s in (creds.token, creds.api_key) if s)
        # Per-request arguments: the forward proxy of this workspace's base URL (HTTPS_PROXY, unless
        # NO_PROXY names its host), and its own SSL context if it has one (else the session's).
        self.transport: dict[str, Any] = {} if proxy is None else proxy.request_kwargs()
        if ssl_context is not None:
            self.transport["ssl"] = ssl_context

    def __repr__(self) -> str:
        # The header dict holds the token and key; a repr must never show them.
        return f"_Workspace(prefix={self.prefix!r})"


class UpstreamClient:
    """Polls one job at a time on a caller-owned, pooled `aiohttp.ClientSession`.

    `get_job` never raises (except for cancellation): every answer, error and timeout becomes a
    `PollResult` whose `detail` is short and free of credentials.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        credentials: Mapping[str, Credentials],
        timeout_s: float,
        clock: Clock | None = None,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        proxies: Mapping[str, Proxy | None] | None = None,
        ssl_contexts: Mapping[str, ssl.SSLContext] | None = None,
    ) -> None:
        self._session = session
        proxies, contexts = proxies or {}, ssl_contexts or {}
        self._workspaces = {
            name: _Workspace(creds, proxies.get(name), contexts.get(name))
            for name, creds in credentials.items()
        }
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._max_body_bytes = max_body_bytes
        self._grown = GrownStatusLog(self._clock.monotonic)

    def __repr__(self) -> str:
        return f"UpstreamClient(workspaces={sorted(self._workspaces)!r}, timeout_s={self._timeout.total})"

    async def get_job(self, job_id: str, workspace: str) -> PollResult:
        """Fetch job `job_id` from `workspace` and classify the answer."""
        ws = self._workspaces.get(workspace)
        if ws is None:
            return PollResult(PollOutcome.CLIENT_ERROR, detail="unknown workspace")
        monotonic = self._clock.monotonic
        started = monotonic()
        try:
            # Redirects are not followed: aiohttp would forward x-api-key to whatever host they name.
            async with self._session.get(
                URL(ws.prefix + quote(job_id, safe=""), encoded=True),
                headers=ws.headers,
                timeout=self._timeout,
                allow_redirects=False,
                raise_for_status=False,
                **ws.transport,
            ) as resp:
                status = resp.status
                # Read every answer, not only 200s, so the pooled connection can be reused.
                raw = await _read_limited(resp.content, self._max_body_bytes)
                retry_after = resp.headers.get("Retry-After") if status in (429, 503) else None
        except TimeoutError:
            # asyncio.TimeoutError on 3.11; caught before ClientError because aiohttp's own timeout
            # errors derive from both.
            return PollResult(PollOutcome.TIMEOUT, detail="timed out", duration_s=monotonic() - started)
        except aiohttp.InvalidURL:
            return PollResult(
                PollOutcome.CLIENT_ERROR, detail="invalid URL", duration_s=monotonic() - started
            )
        except (aiohttp.ClientError, OSError) as exc:
            return PollResult(
                PollOutcome.NETWORK_ERROR, detail=_describe(exc, ws.secrets), duration_s=monotonic() - started
            )
        except Exception as exc:  # the scheduler relies on get_job never raising (bar cancellation)
            return PollResult(
                PollOutcome.NETWORK_ERROR,
                detail="unexpected " + _describe(exc, ws.secrets),
                duration_s=monotonic() - started,
            )
        duration = monotonic() - started
        if status != 200:
            return _classify_status(status, retry_after, self._clock.now(), duration)
        result = classify_body(raw, job_id, duration, self._max_body_bytes)
        body = result.body
        if body is not None and is_grown(body["status"]):
            self._grown.seen(body["status"], job_id, workspace)
        return result


async def _read_limited(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body, or None when it exceeds `limit` bytes (the rest is left unread)."""
    first = await content.read(limit + 1)
    if not first or (len(first) <= limit and content.at_eof()):
        return first  # the usual small body in one piece: no second read to learn it has ended
    chunks = [first]
    total = len(first)
    while total <= limit:
        chunk = await content.read(limit + 1 - total)
        if not chunk:
            return first if len(chunks) == 1 else b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    return None


def classify_body(raw: bytes | None, job_id: str, duration: float, max_body_bytes: int) -> PollResult:
    """A 200 answer: OK only for a JSON object of SPEC §2's shape describing the requested job.

    Never raises: whatever the bytes, the answer is OK with a body that strict JSON can carry (SPEC §16:
    NaN and Infinity as null, lone surrogates as U+FFFD, over-long integers as digit strings) or an
    INVALID_RESPONSE that says why. A status outside the documented list is OK: the upstream has grown.
    """
    try:
        return _classify_body(raw, job_id, duration, max_body_bytes)
    except Exception as exc:  # a bug here must cost one poll, never the scheduler loop
        return PollResult(
            PollOutcome.INVALID_RESPONSE,
            status_code=200,
            detail=f"unreadable body ({type(exc).__name__})",
            duration_s=duration,
        )


def _classify_body(raw: bytes | None, job_id: str, duration: float, max_body_bytes: int) -> PollResult:
    def invalid(detail: str) -> PollResult:
        return PollResult(PollOutcome.INVALID_RESPONSE, status_code=200, detail=detail, duration_s=duration)

    if raw is None:
        return invalid(f"body larger than {max_body_bytes} bytes")
    try:
        body: Any = parse_body(raw)
    except TooDeep:
        return invalid(f"body nested deeper than {MAX_DEPTH} levels")
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both derive from it
        return invalid("body is not JSON")
    if not isinstance(body, dict):
        return invalid(f"body is a JSON {type(body).__name__}, not an object")
    for name in _REQUIRED_FIELDS:
        value = body.get(name)
        if not isinstance(value, str) or not value:
            return invalid(f"field {name!r} missing, empty or not a string")
    if body["status"] not in KNOWN_STATUSES and not body["status"].strip():
        return invalid("field 'status' is blank")
    updated = body["updatedAt"]
    if len(updated) > _MAX_UPDATED_AT or not updated.isprintable():
        return invalid("field 'updatedAt' is not a timestamp")
    if body["id"].lower() != job_id.lower():
        return invalid(f"body is for job {_clip(body['id'])!r}")
    return PollResult(PollOutcome.OK, body=body, status_code=200, duration_s=duration)


def _classify_status(status: int, retry_after: str | None, now: float, duration: float) -> PollResult:
    """Any answer but 200; only the status code and Retry-After matter, never the body."""
    if status == 404:
        outcome = PollOutcome.NOT_FOUND
    elif status == 429:
        outcome = PollOutcome.RATE_LIMITED
    elif status >= 500:
        outcome = PollOutcome.SERVER_ERROR
    else:
        # 401/403 are bad credentials; 3xx means base_url is wrong; both need an operator, not a retry.
        outcome = PollOutcome.CLIENT_ERROR
    return PollResult(
        outcome,
        status_code=status,
        retry_after_s=parse_retry_after(retry_after, now),
        detail=f"HTTP {status}",
        duration_s=duration,
    )


def _clip(value: str) -> str:
    return value if len(value) <= 64 else value[:61] + "..."


def _describe(exc: BaseException, secrets: tuple[str, ...]) -> str:
    """A one-line reason for a failed request, with any credential masked, however it got there."""
    text = str(exc)
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    for secret in secrets:
        detail = detail.replace(secret, "***")
    return detail if len(detail) <= _MAX_DETAIL else detail[: _MAX_DETAIL - 3] + "..."


__all__ = ["DEFAULT_MAX_BODY_BYTES", "UpstreamClient", "classify_body"]
