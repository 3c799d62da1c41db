"""`GET /`: the status page for operators, rendered on the server from the store on every request.

Auth (SPEC §7, §14): with no `[api] tokens` or clients (loopback only) the page shows everything. With
them, a request without `Authorization` gets the aggregate counts only; the watches, transitions and dead
deliveries (job ids, labels, upstream errors: the same data `/v1` protects) need `Authorization: Bearer
<token>`, which the page's script sends from the token field (kept in `sessionStorage`, never in a URL). A
wrong token gets 401. A client's token shows what its scopes allow (watches and transitions with
`watches:read`, dead deliveries with `deliveries:read`), of its workspaces only. The replay button calls
`POST /v1/deliveries/{id}/retry`, which checks the token and its scope itself.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace

import structlog
from aiohttp import web

from watcher import __version__
from watcher.http.clients import CLIENT_KEY, Client
from watcher.http.problems import problem_response
from watcher.http.state import AppState
from watcher.http.statuspage.render import CSP, PageView, render
from watcher.statuses import LIST_STATUSES

log = structlog.get_logger("watcher.statuspage")

REFRESH_S = 5.0  # how often the open page reloads its content
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
TRANSITIONS_SHOWN = 20
DEAD_SHOWN = 50
JOB_TYPES_SHOWN = 100
_MAX_CURSOR = 64  # a cursor is a job id
_GROWN_STATUS = re.compile(r"[^\x00-\x1f\x7f]{1,64}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Vary": "Authorization",
}


def parse_query(query: Mapping[str, str]) -> tuple[str | None, str | None, int]:
    """The page's `status`, `cursor` and `limit` parameters; ValueError names the bad one."""
    status = query.get("status") or None
    # Any status a watch may have: the documented ones and those the upstream grew (printable, bounded).
    if status is not None and status not in LIST_STATUSES and not _GROWN_STATUS.fullmatch(status):
        raise ValueError(f"status: must be one of {', '.join(sorted(LIST_STATUSES))} or a grown status")
    cursor = query.get("cursor") or None
    if cursor is not None and (len(cursor) > _MAX_CURSOR or not cursor.isprintable()):
        raise ValueError("cursor: not a cursor from this page's next-page link")
    raw_limit = query.get("limit") or str(DEFAULT_LIMIT)
    if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 4) or not (
        1 <= int(raw_limit) <= MAX_LIMIT
    ):
        raise ValueError(f"limit: must be an integer from 1 to {MAX_LIMIT}")
    return status, cursor, int(raw_limit)


def _problem(
    status: int,
    detail: str,
    *,
    errors: Sequence[dict[str, str]] = (),
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return problem_response(status, detail, errors=errors, headers={**_HEADERS, **(headers or {})})


async def build_view(
    state: AppState, *, client: Client | None, status: str | None, cursor: str | None, limit: int
) -> PageView:
    """Read what the page shows from the store; details only for a `client`, as far as its scopes go."""
    store = state.store
    counts = await store.watch_counts()
    agg = await store.counts()
    view = PageView(
        now=state.clock.now(),
        version=__version__,
        refresh_s=REFRESH_S,
        token_required=state.settings.api.has_auth(),
        detail=client is not None,
        counts=counts,
        pending=sum(agg.pending_by_webhook.values()),
        dead=sum(agg.dead_by_webhook.values()),
        status=status,
        cursor=cursor,
        limit=limit,
        terminal_statuses=frozenset(state.settings.upstream.terminal_statuses),
    )
    if client is None:
        return view
    only = client.only()
    if "watches:read" in client.scopes:
        page = await store.list_watches(status=status, limit=limit, cursor=cursor, workspaces=only)
        recent = await store.recent_events(TRANSITIONS_SHOWN if only is None else 10 * TRANSITIONS_SHOWN)
        types = [t for t in state.job_types() if client.sees(str(t["workspace"]))]
        view = replace(
            view,
            watches=tuple(page.watches),
            next_cursor=page.next_cursor,
            transitions=tuple([e for e in recent if client.sees(e.workspace)][:TRANSITIONS_SHOWN]),
            job_types=tuple(reversed(types[-JOB_TYPES_SHOWN:])),
            job_types_total=len(types),
        )
    if "deliveries:read" in client.scopes:
        dead = await store.list_deliveries(state="dead", limit=DEAD_SHOWN, workspaces=only)
        view = replace(view, dead_deliveries=tuple(dead))
    return view


def status_page(state: AppState) -> Handler:
    """The `GET /` handler for the daemon whose state is `state` (callers known by `state.clients`)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            status, cursor, limit = parse_query(request.query)
        except ValueError as exc:
            field = str(exc).split(":", 1)[0]
            return _problem(400, str(exc), errors=[{"field": field, "message": str(exc)}])
        client = None
        clients = state.clients
        if clients.open or request.headers.get("Authorization") is not None:
            client = clients.of(request)
            if client is None:
                return _problem(
                    401,
                    "wrong bearer token: send Authorization: Bearer <a token of api.tokens or api.clients>",
                    headers={"WWW-Authenticate": 'Bearer realm="job-watcher"'},
                )
            request[CLIENT_KEY] = client
        try:
            view = await build_view(state, client=client, status=status, cursor=cursor, limit=limit)
        except Exception as exc:  # a store failure is a 503 page, never a traceback
            log.warning("statuspage.store_error", error=type(exc).__name__)
            return _problem(503, f"the store did not answer: {type(exc).__name__}")
        return web.Response(text=render(view), content_type="text/html", charset="utf-8", headers=_HEADERS)

    return handle
