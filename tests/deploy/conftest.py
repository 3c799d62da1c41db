"""Deployment fixtures: the e2e subprocess fixtures, a real sd_notify socket, and the external-tool guard.

Tests that drive a Debian tool (systemd-analyze, kubectl, promtool) skip with a reason when it is missing,
except under CI (`WATCHER_TEST_REQUIRE_TOOLS=1`, set by `.ci/run`), where a missing tool is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import daemon_factory, receiver, sim  # noqa: F401  (fixtures reused as they are)
from tests.support.eventually import eventually

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def require_tool(name: str) -> str:
    """The path of command `name`; skip the test if it is missing, fail instead under CI."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not installed (Debian package: see .ci/run)"
    if os.environ.get("WATCHER_TEST_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{reason}, and WATCHER_TEST_REQUIRE_TOOLS=1 requires it")
    pytest.skip(reason)


@dataclass(frozen=True)
class Notification:
    """One sd_notify datagram as received: when (monotonic and wall clock) and its KEY=value fields."""

    at: float
    wall: float
    fields: dict[str, str]


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # the value for NOTIFY_SOCKET ('@name' for the abstract namespace)
        self.received: list[Notification] = []

    async def collect(self) -> None:
        """Receive datagrams until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 65536)
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            self.received.append(Notification(time.monotonic(), time.time(), fields))

    def with_key(self, key: str) -> list[Notification]:
        """The notifications that carry `key`, oldest first."""
        return [n for n in self.received if key in n.fields]

    async def wait_for(self, predicate: Callable[[Notification], bool], timeout: float) -> Notification:
        """The first notification matching `predicate`, waiting up to `timeout` seconds for it."""
        try:
            return await eventually(lambda: next((n for n in self.received if predicate(n)), None), timeout)
        except AssertionError:
            raise AssertionError(f"no matching notification in {timeout}s; got {self.received!r}") from None


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path (AF_UNIX paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="jw-") as d:
        yield Path(d)


@pytest.fixture
async def notify_socket(short_tmp: Path) -> AsyncIterator[NotifySocket]:
    """A NOTIFY_SOCKET on the filesystem that records every datagram sent to it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = short_tmp / "notify.sock"
    sock.bind(str(path))
    sock.setblocking(False)
    ns = NotifySocket(sock, str(path))
    task = asyncio.create_task(ns.collect())
    try:
        yield ns
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
