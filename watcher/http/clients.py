"""Who calls the API and what it may do (SPEC §14): `api.tokens` (full access) and `[[api.clients]]`.

A `/v1` request is authenticated by its bearer token against every configured token, each compared in
constant time; the client it names must hold the route's scope (`scope_of`: watches and job types need
`watches:*`, deliveries and webhooks `deliveries:*`; GET reads, anything else writes), else 403. A client
limited to some workspaces sees only their watches and deliveries: the handlers ask `Client.sees`. Every
request is counted in `watcher_api_requests_total{client,route,code}`, and every changing `/v1` request
logs one `api.audit` line (client, method, route, job or delivery id, status; never the token).
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from watcher.config.api import SCOPES, ApiConfig
from watcher.http.problems import Handler, Problem, bearer_token, route_name
from watcher.ids import is_uuid
from watcher.metrics import Metrics

log = structlog.get_logger("watcher.api")

PROTECTED = "/v1"
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_DELIVERY_PATHS = ("/v1/deliveries", "/v1/webhooks")


@dataclass(slots=True)
class Client:
    """An authenticated caller: its name (the metric label), scopes and, if limited, workspaces."""

    name: str
    scopes: frozenset[str] = frozenset(SCOPES)
    workspaces: frozenset[str] | None = None  # None: every workspace
    rate_limit_per_s: float | None = None
    _tokens: float = field(default=0.0, repr=False)  # the rate limit's bucket
    _at: float | None = field(default=None, repr=False)

    def sees(self, workspace: str) -> bool:
        """True if this client may see and change watches of `workspace`."""
        return self.workspaces is None or workspace in self.workspaces

    def only(self) -> tuple[str, ...] | None:
        """The workspaces to filter lists by, sorted; None when the client sees them all."""
        return None if self.workspaces is None else tuple(sorted(self.workspaces))

    def take(self, now: float) -> float:
        """Spend one request of the rate limit: 0 if allowed, else the seconds until one is."""
        rate = self.rate_limit_per_s
        if rate is None:
            return 0.0
        burst = max(1.0, rate)
        self._tokens = burst if self._at is None else min(burst, self._tokens + (now - self._at) * rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / rate


ANONYMOUS = "anonymous"  # no token: the label of requests without one, and the client of an open API
TOKENS_CLIENT = "token"  # the client of a token of `api.tokens`: full access


class Clients:
    """The configured callers, looked up by bearer token.

    A configuration reload builds a new one and swaps it in (`AppState.reconfigure`): a request already
    authenticated keeps its client; `previous` hands a client that keeps its name and rate limit its
    bucket, so a reload does not refill it.
    """

    def __init__(self, api: ApiConfig, previous: Clients | None = None) -> None:
        self.open = not api.has_auth()  # no token configured: everyone has full access (loopback only)
        self._by_token: list[tuple[bytes, Client]] = [
            (t.get_secret_value().encode(), Client(TOKENS_CLIENT)) for t in api.tokens
        ]
        before = {c.name: c for _, c in previous._by_token} if previous is not None else {}
        for c in api.clients:
            client = Client(
                c.name,
                frozenset(c.scopes),
                None if c.workspaces is None else frozenset(c.workspaces),
                c.rate_limit_per_s,
            )
            old = before.get(c.name)
            if old is not None and old.rate_limit_per_s == client.rate_limit_per_s:
                client._tokens, client._at = old._tokens, old._at  # a bucket moves to its successor
            self._by_token.append((c.secret().encode(), client))
        self._anonymous = Client(ANONYMOUS)

    def find(self, presented: str | None) -> Client | None:
        """The client whose token is `presented` (every token is compared, each in constant time); the
        anonymous full-access client when no token is configured; else None."""
        if self.open:
            return self._anonymous
        if presented is None:
            return None
        given = presented.encode("utf-8", "surrogateescape")
        found = None
        for token, client in self._by_token:
            if hmac.compare_digest(given, token) and found is None:
                found = client
        return found

    def of(self, request: web.Request) -> Client | None:
        """The client of a request's `Authorization: Bearer` header (None: missing or wrong)."""
        return self.find(bearer_token(request))


CLIENT_KEY: web.RequestKey[Client] = web.RequestKey("client", Client)
# What a handler adds to its request's `api.audit` line (the job id of a body, the size of a batch).
AUDIT_KEY: web.RequestKey[dict[str, Any]] = web.RequestKey("audit", dict)


def client_of(request: web.Request) -> Client:
    """The authenticated client of a `/v1` request (set by `auth_middleware`)."""
    return request[CLIENT_KEY]


def audit(request: web.Request, **fields: Any) -> None:
    """Add `fields` to the request's `api.audit` line."""
    request.setdefault(AUDIT_KEY, {}).update(fields)


def scope_of(method: str, route: str) -> str | None:
    """The scope a `/v1` route needs; None for routes outside `/v1` and for unmatched paths."""
    if not route.startswith(PROTECTED + "/"):
        return None
    kind = "deliveries" if route.startswith(_DELIVERY_PATHS) else "watches"
    return f"{kind}:{'read' if method in _READS else 'write'}"


def _protected(path: str) -> bool:
    return path == PROTECTED or path.startswith(PROTECTED + "/")


def auth_middleware(clients: Callable[[], Clients], now: Callable[[], float]) -> Middleware:
    """Authenticate `/v1` requests (401), check the route's scope (403) and the client's rate (429).

    `clients` gives the callers as configured now (a reload swaps them). Runs inside `problem_middleware`,
    which renders the problems it raises.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _protected(request.path):
            return await handler(request)
        client = clients().of(request)
        if client is None:
            raise Problem(
                401,
                "missing or wrong bearer token: send Authorization: Bearer <a token of api.tokens or"
                " api.clients>",
                headers={"WWW-Authenticate": 'Bearer realm="job-watcher"'},
            )
        request[CLIENT_KEY] = client
        wait = client.take(now())
        if wait > 0:
            raise Problem(
                429,
                f"client {client.name} is over its rate_limit_per_s; retry after Retry-After seconds",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        scope = scope_of(request.method, route_name(request))
        if scope is not None and scope not in client.scopes:
            raise Problem(403, f"client {client.name} lacks the scope {scope} this route needs")
        return await handler(request)

    return middleware


def _ids(request: web.Request) -> dict[str, Any]:
    """The job or delivery id of the path, when it is one: a path could carry anything, even a token."""
    out: dict[str, Any] = {}
    job = request.match_info.get("job_id")
    if job is not None and is_uuid(job):
        out["job_id"] = job.lower()
    delivery = request.match_info.get("delivery_id")
    if delivery is not None and delivery.isascii() and delivery.isdigit() and len(delivery) <= 19:
        out["delivery_id"] = int(delivery)
    return out


def observe_middleware(metrics: Metrics) -> Middleware:
    """Count every request by client, route template and status, and write the `api.audit` line of every
    changing `/v1` request. The outermost middleware: it sees the answer as sent, problems included."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # a redirect, re-raised by problem_middleware
            status = exc.status
            raise
        finally:
            client = request.get(CLIENT_KEY)
            name = client.name if client is not None else ANONYMOUS
            route = route_name(request)
            metrics.api_requests.labels(client=name, route=route, code=str(status)).inc()
            if _protected(request.path) and request.method not in _READS:
                ids = _ids(request)
                log.info(
                    "api.audit",
                    client=name,
                    method=request.method,
                    route=route,
                    status=status,
                    **ids,
                    **request.get(AUDIT_KEY, {}),
                )

    return middleware
