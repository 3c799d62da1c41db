"""A loopback TCP proxy that a test cuts and restores, to give a real client a real network outage.

    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()          # listens on 127.0.0.1:proxy.port and forwards every connection
    await proxy.cut()            # stops listening (connect: refused) and resets every open connection
    await proxy.restore()        # listens again on the same port
    await proxy.reset_all()      # resets the open connections, keeps listening (a connection dropped
                                 # mid-transaction, as a server restart or a middlebox would)

It runs on the test's event loop; the client (a daemon subprocess, or a store in-process) sees the outage
exactly as it would see a database that went away: refused connects and RST on established ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct


class TcpProxy:
    """Forwards connections from 127.0.0.1:`port` to `target_host`:`target_port` until cut."""

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self._server: asyncio.Server | None = None
        self._pipes: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0  # connections forwarded, over the proxy's life
        self.resets = 0  # connections reset by `cut` or `reset_all`

    @property
    def listening(self) -> bool:
        """True while connections are accepted."""
        return self._server is not None

    async def start(self) -> None:
        """Listen (on a free port the first time, then on the same one) and forward."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def restore(self) -> None:
        """Listen again after a cut."""
        await self.start()

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones: the database is gone."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        await self.reset_all()

    async def reset_all(self) -> None:
        """Reset every open connection (RST, not FIN) on both sides, whatever it was in the middle of."""
        pipes, self._pipes = self._pipes, set()
        for client, upstream in pipes:
            _reset(client)
            _reset(upstream)
            self.resets += 1
        await asyncio.sleep(0)

    async def close(self) -> None:
        """Stop for good and wait for the forwarding tasks."""
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        if self._server is None:  # cut while connecting
            _reset(writer)
            _reset(up_writer)
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self._pipes.add(pair)
        tasks = [
            asyncio.create_task(_pump(reader, up_writer)),
            asyncio.create_task(_pump(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.difference_update(tasks)
            self._pipes.discard(pair)
            for w in pair:
                with contextlib.suppress(Exception):
                    w.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST: SO_LINGER 0 makes the kernel drop the connection instead of ending it politely."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
