"""RFC 9457 problem details and the request guards that produce them: body size and deadline, JSON bodies.

Every error the HTTP server answers is `application/problem+json`: handlers raise `Problem`, aiohttp's own
404/405/413 become problems in `problem_middleware`, and an unexpected exception becomes a bare 500 whose
details stay in the log. Nothing a client sends can make a traceback reach it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from watcher.errors import StoreUnavailable

log = structlog.get_logger("watcher.api")

PROBLEM_TYPE = "application/problem+json"
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    507: "Insufficient Storage",
}
_READ_CHUNK = 65536
STORE_RETRY_AFTER_S = 5  # what a 503 for a store outage asks a client to wait
# When the request's body must have arrived whole (loop time), set by the middleware (SPEC §16).
BODY_DEADLINE: web.RequestKey[float] = web.RequestKey("body_deadline", float)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Problem(Exception):
    """An error answer: raise it from a handler and the middleware renders it as problem+json."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: Sequence[dict[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors)
        self.headers = headers or {}

    def response(self) -> web.Response:
        """The problem as an aiohttp response."""
        return problem_response(self.status, self.detail, errors=self.errors, headers=self.headers)


def field_problem(field: str, message: str) -> Problem:
    """A 400 naming one bad field."""
    return Problem(400, f"{field}: {message}", errors=[{"field": field, "message": message}])


def problem_response(
    status: int,
    detail: str,
    *,
    errors: Sequence[dict[str, str]] = (),
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An `application/problem+json` response (type, title, status, detail and, for 400, `errors`)."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = list(errors)
    return web.Response(
        status=status, text=json.dumps(body), content_type=PROBLEM_TYPE, headers=headers or {}
    )


# -- auth -------------------------------------------------------------------------------------------------


def bearer_token(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, None if absent or another scheme."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_matches(presented: str | None, tokens: Sequence[str]) -> bool:
    """True if `presented` equals one of `tokens`; every token is compared, each in constant time."""
    if presented is None:
        return False
    given = presented.encode("utf-8", "surrogateescape")
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given, token.encode("utf-8"))
    return found


# -- bodies -----------------------------------------------------------------------------------------------


def check_length(request: web.Request, max_bytes: int) -> None:
    """Refuse a body whose declared Content-Length is over `max_bytes` before reading any of it."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise Problem(
            413, f"request body of {length} bytes is over the {max_bytes}-byte limit (api.max_body_bytes)"
        )


async def read_json(request: web.Request, max_bytes: int) -> Any:
    """The request's JSON body, read no further than `max_bytes` and no later than the body deadline; 413,
    408, or 400 naming what is wrong."""
    check_length(request, max_bytes)
    if request.content_type != "application/json":
        raise field_problem("Content-Type", "must be application/json")
    body = bytearray()
    deadline = request.get(BODY_DEADLINE)
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                chunk = await request.content.read(_READ_CHUNK)
                if not chunk:
                    break
                body += chunk
                if len(body) > max_bytes:
                    raise Problem(
                        413, f"request body is over the {max_bytes}-byte limit (api.max_body_bytes)"
                    )
    except TimeoutError:
        log.info("api.body_timeout", route=route_name(request), received=len(body))
        raise Problem(408, "the request body did not arrive in time (api.body_timeout_s)") from None
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise field_problem("body", "is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else "is not valid JSON"
        raise field_problem("body", f"malformed JSON: {message}") from None


def _reject_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (RFC 8259), although Python's parser accepts them."""
    raise ValueError(f"{name} is not allowed")


# -- middleware -------------------------------------------------------------------------------------------


def problem_middleware(max_body_bytes: int, *, body_timeout_s: float = 30.0) -> Middleware:
    """The middleware: the size guard, the body's deadline, and every error rendered as a problem (the
    problems of `watcher.http.clients.auth_middleware`, which runs inside it, included)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[BODY_DEADLINE] = asyncio.get_running_loop().time() + body_timeout_s
        try:
            check_length(request, max_body_bytes)
            return await handler(request)
        except Problem as problem:
            return _closing(problem.response(), problem.status)
        except StoreUnavailable as exc:
            # An outage is expected and temporary (SPEC §16): the client is told to come back, not that
            # the server is broken, and the log gets one line, not a traceback.
            log.warning("api.store_unavailable", route=route_name(request), error=str(exc))
            return problem_response(
                503,
                "the store is unavailable; try again later",
                headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")}
            detail = _http_detail(exc)
            return _closing(problem_response(exc.status, detail, headers=headers), exc.status)
        except Exception as exc:  # the last line of defence: a bare 500, details only in the log
            log.exception(
                "api.handler_failed",
                route=route_name(request),
                method=request.method,
                error=type(exc).__name__,
            )
            return problem_response(500, "the server failed to handle this request; see its log")

    return middleware


def route_name(request: web.Request) -> str:
    """The route template of a request, e.g. `/v1/watches/{job_id}`: a path could carry a pasted secret."""
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical


def _http_detail(exc: web.HTTPException) -> str:
    # No request bytes in an answer (SPEC §16): the path could carry anything, even a pasted token.
    if exc.status == 404:
        return "no such resource; see /openapi.json for the routes"
    if exc.status == 405:
        return "method not allowed here; Allow lists the methods of this route"
    if exc.status == 413:
        return "request body is over the limit (api.max_body_bytes)"
    return exc.reason


def _closing(response: web.Response, status: int) -> web.Response:
    """After a 413 or 408 the rest of the body is unread: close the connection instead of draining it."""
    if status in (408, 413):
        response.force_close()
    return response
