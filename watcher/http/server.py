"""The API's HTTP server: aiohttp's, except for the answers it gives to requests no handler ever sees.

aiohttp's protocol answers a request it cannot parse (a request line or header over 8,190 bytes, a header
that is not HTTP, a request line that is not one) by itself, before any middleware runs: a text/plain 400
that quotes the offending bytes, such as the start of a bearer token, and a traceback in a plain-text log
line. `ApiRunner` serves the application through `ProblemProtocol` instead, whose answer is problem+json
naming only the kind of fault, and whose log line is one JSON event without the bytes (SPEC §16).

Slow clients (SPEC §16): aiohttp has no timeout for request headers, but its keep-alive timer closes a
connection that has no complete request `keepalive_timeout` after it opened or after its last answer, and
partial headers do not reset it; `ApiRunner` sets it to `api.header_timeout_s`. The request body's deadline
is `read_json`'s (`watcher.http.problems`); a body no handler reads is drained for at most `LINGER_S`.
`ApiRunner` also counts open connections for `CappedSite` (`watcher.http.listener`).

This leans on aiohttp details: `RequestHandler.handle_error` builds that answer, `web.Server` keeps the
protocol's arguments in `_kwargs`, and the keep-alive timer behaves as described.
tests/api/test_hostile_http.py and tests/api/test_slow_clients.py fail if an upgrade changes any of them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, InvalidHeader, LineTooLong
from aiohttp.web_protocol import RequestHandler

from watcher.http.listener import ConnectionCount
from watcher.http.problems import problem_response

log = structlog.get_logger("watcher.api")


def parse_error_detail(status: int, exc: BaseException | None) -> str:
    """What went wrong, in words that quote nothing from the request."""
    if isinstance(exc, LineTooLong):
        return "the request line or a header field is too long"
    if isinstance(exc, BadStatusLine):
        return "the request line is not HTTP/1.1"
    if isinstance(exc, InvalidHeader):
        return "a header field is not valid HTTP"
    if status == 400:
        return "the request is not valid HTTP/1.1"
    if status == 504:
        return "the request took too long to handle"
    return "the server failed to handle this request; see its log"


class ProblemProtocol(RequestHandler):
    """aiohttp's per-connection protocol, answering what it cannot parse as problem+json."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The answer to a request that failed outside any handler; `message` (request bytes) is dropped."""
        if status >= 500:
            log.error("api.request_failed", status=status, error=type(exc).__name__ if exc else None)
        else:
            log.info("api.bad_request", status=status, error=type(exc).__name__ if exc else None)
        if request.writer.output_size > 0:
            # Part of an answer is on the wire already: all that is left is to drop the connection.
            raise ConnectionError("cannot answer an error after the response has started")
        response = problem_response(status, parse_error_detail(status, exc))
        response.force_close()  # what is left of the request on the connection cannot be trusted
        return response


class _ProblemServer(web.Server):
    """A `web.Server` whose connections speak `ProblemProtocol`, counted in `count`."""

    def __init__(self, *args: Any, count: ConnectionCount, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.count = count

    def __call__(self) -> RequestHandler:
        return ProblemProtocol(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.count.opened()

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.count.closed()


# A body no handler read (an answer given before reading it) is drained for at most this long.
LINGER_S = 5.0


class ApiRunner(web.AppRunner):
    """`web.AppRunner` (same arguments) whose server answers unparseable requests with problem+json, closes
    connections whose headers take longer than `header_timeout_s`, and counts its connections in `count`."""

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout_s: float = 10.0,
        count: ConnectionCount | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, keepalive_timeout=header_timeout_s, lingering_time=LINGER_S, **kwargs)
        self.count = count or ConnectionCount()

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        kwargs: dict[str, Any] = dict(made._kwargs)  # private: see the module docstring
        return _ProblemServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            count=self.count,
            **kwargs,
        )
