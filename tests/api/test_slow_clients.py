"""Slow and greedy clients (SPEC §16): headers that never end, bodies that trickle, more connections than
`api.max_connections`. Each is cut off in bounded time, and `/healthz` answers again soon after.

The header deadline is aiohttp's keep-alive timer (see `watcher.http.server`): the tests here and
`test_aiohttp_still_has_the_hooks_the_slow_client_guards_use` fail if an upgrade changes how it behaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CollectorRegistry

from tests.api.conftest import StartDaemon, write_settings
from watcher.daemon import Daemon
from watcher.errors import StartupError
from watcher.http.listener import RateLimitedLog

TOKEN = "slow-client-token-0123456789"
JOB = "5135bfe3-b2c7-41f3-a44f-f4b58e7384df"
FAST = "header_timeout_s = 0.5\nbody_timeout_s = 0.5\n"


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


async def _closed_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drip: bytes) -> float:
    """Send `drip` one byte every 50 ms until the server closes the connection; the seconds that took."""
    started = time.monotonic()
    async with asyncio.timeout(10):
        for i in range(10_000):
            if reader.at_eof():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(drip[i % len(drip) : i % len(drip) + 1])
                await writer.drain()
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(0.05):
                    await reader.read(65536)
    writer.close()
    return time.monotonic() - started


async def test_headers_that_never_end_are_cut_off(start_daemon: StartDaemon) -> None:
    """A client trickling header lines forever loses its connection after about `header_timeout_s`,
    both on a new connection and on a kept-alive one after a first complete request."""
    d = await start_daemon(api=FAST)
    port = _port(d.base)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
    took = await _closed_after(reader, writer, b"X-Slow: 1\r\n")
    assert 0.3 < took < 5, took

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    assert (await reader.readuntil(b'{"status": "ok"}')).startswith(b"HTTP/1.1 200")
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
    took = await _closed_after(reader, writer, b"X-Slow: 1\r\n")
    assert 0.3 < took < 5, took


async def test_an_idle_connection_is_closed_after_the_header_timeout(start_daemon: StartDaemon) -> None:
    """A connection that never sends a byte is closed, too."""
    d = await start_daemon(api=FAST)
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(d.base))
    started = time.monotonic()
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    assert time.monotonic() - started > 0.3


async def test_a_body_that_trickles_gets_408_and_the_connection_closes(start_daemon: StartDaemon) -> None:
    """A registration whose body arrives slower than `body_timeout_s` is a 408 problem, then closed."""
    d = await start_daemon(token=TOKEN, api=FAST)
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(d.base))
    body = json.dumps({"job_id": JOB}).encode()
    writer.write(
        b"POST /v1/watches HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body[:3]
    )
    started = time.monotonic()
    answer = b""
    async with asyncio.timeout(10):
        for byte in body[3:] * 100:
            with contextlib.suppress(ConnectionError):
                writer.write(bytes([byte]))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    got = await reader.read(65536)
                    answer += got
                    if not got:
                        break
    took = time.monotonic() - started
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"application/problem+json" in answer and b"api.body_timeout_s" in answer
    assert 0.3 < took < 5, took
    assert (await d.call("GET", f"/v1/watches/{JOB}"))[0] == 404  # nothing half-registered


async def test_more_connections_than_the_cap_wait_but_healthz_answers_soon(start_daemon: StartDaemon) -> None:
    """With `max_connections` held by idle clients, a new request waits in the backlog (it is not answered
    at once) and is answered once the idle ones time out."""
    d = await start_daemon(api="header_timeout_s = 1.0\nmax_connections = 5\n")
    port = _port(d.base)
    async with d.http.get(d.base + "/healthz") as r:
        assert r.status == 200
    await asyncio.sleep(1.5)  # the session's kept-alive connection is closed by now
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as http,
        http.get(d.base + "/healthz", timeout=aiohttp.ClientTimeout(10)) as r,
    ):
        assert r.status == 200
    took = time.monotonic() - started
    for _, writer in idle:
        writer.close()
    assert 0.5 < took < 8, took  # held back by the cap, freed by the header timeout


def test_aiohttp_still_has_the_hooks_the_slow_client_guards_use() -> None:
    """`ApiRunner` passes `keepalive_timeout` and `lingering_time` to aiohttp's protocol and counts
    connections in `Server.connection_made/connection_lost`; an upgrade that renames them fails here."""
    params = inspect.signature(RequestHandler.__init__).parameters
    assert {"keepalive_timeout", "lingering_time"} <= set(params), aiohttp.__version__
    for name in ("connection_made", "connection_lost"):
        assert list(inspect.signature(getattr(web.Server, name)).parameters)[:3] == [
            "self",
            "handler",
            "transport" if name == "connection_made" else "exc",
        ], (aiohttp.__version__, name)
    assert "_process_keepalive" in vars(RequestHandler), aiohttp.__version__


def test_rate_limited_log_counts_what_it_does_not_log() -> None:
    """One line per window; the next line says how many were left out."""
    now = [0.0]
    limited = RateLimitedLog("api.accept_failed", 10.0, now=lambda: now[0])
    logged = []
    for i in range(100):
        now[0] = i * 0.5  # 50 s of errors, two a second
        logged.append(limited.report(error="Too many open files"))
    assert sum(logged) == 5


_ACCEPT_FLOOD = """
import asyncio, resource, sys
from aiohttp import web
from watcher.http.listener import CappedSite
from watcher.http.server import ApiRunner

async def main():
    resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
    app = web.Application()
    app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
    runner = ApiRunner(app, header_timeout_s=60, access_log=None)
    await runner.setup()
    site = CappedSite(runner, "127.0.0.1", 0, cap=100_000, count=runner.count)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.sleep(float(sys.argv[1]))

asyncio.run(main())
"""


async def test_accept_errors_are_logged_at_a_bounded_rate(tmp_path: Path) -> None:
    """Out of descriptors (a cap above the limit), accept() fails again and again: a few log lines, no
    traceback, and the listener goes on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _ACCEPT_FLOOD,
        "4",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    held: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        port = int(await proc.stdout.readline())
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(held) < 100:
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", port))
            held.append(sock)
            await asyncio.sleep(0.02)
        async with asyncio.timeout(15):
            out = (await proc.communicate())[0].decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for sock in held:
            sock.close()
    lines = [line for line in out.splitlines() if "api.accept_failed" in line]
    assert 1 <= len(lines) <= 2, out[-2000:]
    assert "Traceback" not in out and len(out) < 5000, out[-2000:]


async def test_a_port_in_use_is_a_startup_error_naming_the_key(tmp_path: Path) -> None:
    """`CappedSite` binds as `web.TCPSite` did: a port another socket holds is `api.listen: cannot listen`."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    try:
        settings = write_settings(tmp_path, "http://127.0.0.1:9/api/v2", "http://127.0.0.1:9/", port)
        daemon = Daemon(settings, handle_signals=False, registry=CollectorRegistry())
        with pytest.raises(StartupError, match=r"api\.listen: cannot listen on 127\.0\.0\.1:\d+: Address"):
            await daemon.run()
    finally:
        held.close()
