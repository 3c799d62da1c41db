"""A tiny forward HTTP proxy on loopback that records where each request went, for the proxy tests.

    proxy = ForwardProxy()
    await proxy.start()        # listens on 127.0.0.1:proxy.port
    proxy.seen                 # ["CONNECT 127.0.0.1:4431", "POST http://127.0.0.1:8099/hook", ...]
    proxy.targets()            # {"127.0.0.1:4431", "127.0.0.1:8099"}: host:port of every request
    await proxy.stop()

It speaks the two forms a client uses with HTTPS_PROXY/HTTP_PROXY: `CONNECT host:port` (a tunnel, for
https:// URLs: it answers 200 and pipes bytes both ways) and an absolute-form request line
(`POST http://host:port/path HTTP/1.1`, for http:// URLs: it sends the request on in origin form with
`Connection: close`, then pipes). One request or tunnel per client connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

_HOP_BY_HOP = (b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization")


class ForwardProxy:
    """Forwards CONNECT tunnels and absolute-form requests, recording each one in `seen`."""

    def __init__(self) -> None:
        self.port = 0
        self.seen: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def targets(self) -> set[str]:
        """The host:port of every request or tunnel seen so far."""
        out = set()
        for line in self.seen:
            method, _, target = line.partition(" ")
            out.add(target if method == "CONNECT" else urlsplit(target).netloc)
        return out

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head[:-4].split(b"\r\n")
        method, target, version = request_line.decode("latin-1").split(" ")
        self.seen.append(f"{method} {target}")
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            parts = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            kept = [h for h in header_lines if h.split(b":", 1)[0].strip().lower() not in _HOP_BY_HOP]
            up_writer.write(
                b"\r\n".join([f"{method} {path} {version}".encode(), *kept, b"Connection: close", b"", b""])
            )
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await src.read(65536):
            dst.write(chunk)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
