"""The API's listening socket, with an accept loop of its own: a cap on connections, quiet accept errors.

asyncio's own accept loop (what `web.TCPSite` uses) takes every connection the kernel offers, until the
process runs out of descriptors; then each failed `accept()` goes to the loop's exception handler with a
traceback, and every outgoing connection (polls, webhook deliveries) fails as well. `CappedSite` accepts
only while fewer than `cap` connections are open; past it, it stops calling `accept()` until one closes,
and the kernel's backlog holds the rest (SPEC §16). An accept error is logged at most once per
`ACCEPT_LOG_EVERY_S`, with the number of errors since, and the loop waits `ACCEPT_RETRY_S` before trying
again, so a descriptor shortage costs a line every few seconds instead of a tight loop of tracebacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

log = structlog.get_logger("watcher.api")

ACCEPT_RETRY_S = 0.5  # how long to wait after accept() fails for want of descriptors or memory
ACCEPT_LOG_EVERY_S = 10.0
BACKLOG = 128
# Errors of accept() that say nothing about us: the peer gave up, or a signal came. Any other (EMFILE,
# ENFILE, ENOBUFS, ENOMEM) is logged at a bounded rate and waited out.
_TRANSIENT_ERRNOS = frozenset(
    {errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED, errno.EINTR, errno.EPROTO}
)


class ConnectionCount:
    """How many connections are open (or accepted and being set up), and a way to wait until fewer than a
    cap are."""

    def __init__(self) -> None:
        self.open = 0
        self.starting = 0  # accepted, not yet handed to the server (counted twice for a moment: safe)
        self._changed = asyncio.Event()

    def held(self) -> int:
        """Descriptors the API holds for connections."""
        return self.open + self.starting

    def opened(self) -> None:
        """One more connection."""
        self.open += 1

    def closed(self) -> None:
        """One connection fewer; wakes whoever waits for room."""
        self.open -= 1
        self._changed.set()

    def set_up(self) -> None:
        """One accepted connection handed over (or dropped); the server counts it as open from now on."""
        self.starting -= 1
        self._changed.set()

    async def wait_below(self, cap: int) -> None:
        """Return once fewer than `cap` connections are held."""
        while self.held() >= cap:
            self._changed.clear()
            await self._changed.wait()


class RateLimitedLog:
    """Logs an event at most once per `every_s`, with the number of occurrences since the last line."""

    def __init__(self, event: str, every_s: float, now: Callable[[], float] = time.monotonic) -> None:
        self._event = event
        self._every_s = every_s
        self._now = now
        self._last: float | None = None
        self._suppressed = 0

    def report(self, **fields: Any) -> bool:
        """Count one occurrence; log it (with `suppressed`, the count since) unless one was logged lately."""
        now = self._now()
        if self._last is not None and now - self._last < self._every_s:
            self._suppressed += 1
            return False
        log.warning(self._event, suppressed=self._suppressed, **fields)
        self._last, self._suppressed = now, 0
        return True


def _close_socket(sock: socket.socket, _task: asyncio.Task[None]) -> None:
    sock.close()


class _Listening(asyncio.AbstractServer):
    """What `web.BaseSite` keeps as its server: the sockets (for `runner.addresses`) and a way to close."""

    def __init__(self, sockets: list[socket.socket], tasks: list[asyncio.Task[None]]) -> None:
        self.sockets = tuple(sockets)
        self._tasks = tasks
        self._loop = asyncio.get_running_loop()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def start_serving(self) -> None:
        """Serving starts with the site; nothing to do."""

    async def serve_forever(self) -> None:
        await self.wait_closed()

    def close(self) -> None:
        # Each socket is closed once its accept task has ended: closed earlier, its descriptor could be
        # reused before the cancelled accept() stops watching that number.
        for task, sock in zip(self._tasks, self.sockets, strict=True):
            if task.done():
                sock.close()
            else:
                task.add_done_callback(functools.partial(_close_socket, sock))
                task.cancel()

    def is_serving(self) -> bool:
        return any(not t.done() for t in self._tasks)

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)


class CappedSite(web.BaseSite):
    """A TCP site that holds at most `cap` connections open at once; the count is kept in `count`, which
    the runner's server updates as its connections open and close."""

    __slots__ = (
        "_cap", "_connecting", "_count", "_errors", "_handshake_s", "_handshakes", "_host", "_port", "_tls",
    )  # fmt: skip

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        cap: int,
        count: ConnectionCount,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(runner, backlog=BACKLOG)
        self._host, self._port, self._cap, self._count = host, port, cap, count
        # HTTPS: each accepted connection's TLS handshake must finish within `handshake_timeout_s` (a slow
        # client holds a connection slot no longer than one whose headers are slow, SPEC §16).
        self._tls, self._handshake_s = ssl_context, handshake_timeout_s
        self._errors = RateLimitedLog("api.accept_failed", ACCEPT_LOG_EVERY_S)
        # A client that does not trust the certificate, or a port scanner: bounded like accept errors.
        self._handshakes = RateLimitedLog("api.tls_handshake_failed", ACCEPT_LOG_EVERY_S)
        self._connecting: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return f"{'http' if self._tls is None else 'https'}://{self._host}:{self._port}"

    async def start(self) -> None:
        """Bind and listen on every address of the host, and start accepting."""
        await super().start()
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self._host, self._port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _, address in dict.fromkeys(infos):
                try:
                    sock = socket.socket(family, kind, proto)
                except OSError:  # a family this host lacks (IPv6 off): as asyncio's create_server does
                    continue
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(self._backlog)
                sock.setblocking(False)
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        if not sockets:
            raise OSError(errno.EADDRNOTAVAIL, f"no address of {self._host} can be listened on")
        tasks = [asyncio.create_task(self._accept(sock), name="api-accept") for sock in sockets]
        self._server = _Listening(sockets, tasks)

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._count.wait_below(self._cap)
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                await self._failed(exc)
                continue
            self._start(conn)
            # Take what else the kernel holds without a loop round trip each, as asyncio's accept loop does.
            for _ in range(self._backlog):
                if self._count.held() >= self._cap:
                    break
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    await self._failed(exc)
                    break
                self._start(conn)

    async def _failed(self, exc: OSError) -> None:
        """An accept() that failed: nothing for a peer that gave up, else a bounded log line and a pause."""
        if exc.errno in _TRANSIENT_ERRNOS:
            return
        self._errors.report(error=exc.strerror or type(exc).__name__, open=self._count.open)
        await asyncio.sleep(ACCEPT_RETRY_S)

    def _start(self, conn: socket.socket) -> None:
        self._count.starting += 1
        task = asyncio.create_task(self._connect(conn), name="api-connect")
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        server = self._runner.server
        try:
            if server is None:  # the runner is being cleaned up
                conn.close()
                return
            conn.setblocking(False)
            tls: dict[str, Any] = {}
            if self._tls is not None:
                tls = {"ssl": self._tls, "ssl_handshake_timeout": self._handshake_s}
            await asyncio.get_running_loop().connect_accepted_socket(server, conn, **tls)
        except OSError as exc:  # the peer went away between accept() and here, or its TLS handshake failed
            conn.close()
            errors = self._errors if self._tls is None else self._handshakes
            errors.report(error=exc.strerror or type(exc).__name__, open=self._count.open)
        except Exception as exc:  # a bug in setting up one connection must not stop the listener
            conn.close()
            self._errors.report(error=type(exc).__name__, open=self._count.open)
        finally:
            self._count.set_up()
