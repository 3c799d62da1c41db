"""The API's HTTP server: aiohttp's, except for the answers it gives to requests no handler ever sees.

aiohttp's protocol answers a request it cannot parse (a request line or header over 8,190 bytes, a header
that is not HTTP, a request line that is not one) by itself, before any middleware runs: a text/plain 400
that quotes the offending bytes, such as the start of a bearer token, and a traceback in a plain-text log
line. `ApiRunner` serves the application through `ProblemProtocol` instead, whose answer is problem+json
naming only the kind of fault, and whose log line is one JSON event without the bytes (SPEC §16).

This leans on two aiohttp details: `RequestHandler.handle_error` builds that answer, and `web.Server` keeps
the protocol's arguments in `_kwargs`. tests/api/test_hostile_http.py fails if an upgrade changes either.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadStatusLine, InvalidHeader, LineTooLong
from aiohttp.web_protocol import RequestHandler

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
    """A `web.Server` whose connections speak `ProblemProtocol`."""

    def __call__(self) -> RequestHandler:
        return ProblemProtocol(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """`web.AppRunner` (same arguments) whose server answers unparseable requests with problem+json."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        kwargs: dict[str, Any] = dict(made._kwargs)  # private: see the module docstring
        return _ProblemServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **kwargs,
        )
