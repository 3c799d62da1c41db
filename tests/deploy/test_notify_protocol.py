"""watcher.daemon.systemd on its own: datagram format, socket kinds, watchdog variables, the notify loop."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from watcher.daemon.systemd import Notifier, notify_loop, one_line, status_line, watchdog_interval
from watcher.devtools.clock import ManualClock


@pytest.fixture
def dgram(short_tmp: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket on the filesystem and its path."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = str(short_tmp / "n.sock")
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path


async def _advance(clock: ManualClock, seconds: float) -> None:
    """Advance the clock and let the loop's sleep helpers settle (they take a few event-loop turns)."""
    await clock.advance(seconds)
    await _settle()


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def _drain(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recv(65536).decode())
        except BlockingIOError:
            return out


class TestNotifier:
    """The datagram sender."""

    def test_unset_socket_is_a_no_op(self) -> None:
        """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
        n = Notifier.from_env({})
        assert not n.enabled
        assert n.ready("x") is False
        assert n.watchdog() is False

    def test_path_socket_gets_newline_separated_fields(self, dgram: tuple[socket.socket, str]) -> None:
        """READY=1 and STATUS= travel in one datagram."""
        sock, path = dgram
        n = Notifier.from_env({"NOTIFY_SOCKET": path})
        assert n.ready("watching 3 jobs")
        assert sock.recv(4096) == b"READY=1\nSTATUS=watching 3 jobs"
        assert n.stopping("stopping")
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
        assert n.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"

    def test_abstract_namespace_socket(self) -> None:
        """'@name' addresses the abstract namespace (a leading NUL byte)."""
        name = f"jw-unit-{os.getpid()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(b"\0" + name.encode())
            sock.settimeout(5)
            assert Notifier("@" + name).status("ok")
            assert sock.recv(4096) == b"STATUS=ok"

    def test_status_cannot_inject_fields(self, dgram: tuple[socket.socket, str]) -> None:
        """A newline in a status cannot smuggle in another KEY=value line."""
        sock, path = dgram
        Notifier(path).status("a\nREADY=1")
        assert sock.recv(4096) == b"STATUS=a READY=1"
        assert one_line(" x \t y\r\n") == "x y"

    def test_missing_socket_warns_once_and_never_raises(self, short_tmp: Path) -> None:
        """A notify socket that went away is logged once, not per ping."""
        n = Notifier(str(short_tmp / "gone.sock"))
        with capture_logs() as logs:
            assert n.watchdog() is False
            assert n.watchdog() is False
        assert [e["event"] for e in logs] == ["systemd.notify_failed"]


class TestWatchdogInterval:
    """Which WATCHDOG_USEC / WATCHDOG_PID combinations ask this process for pings."""

    @pytest.mark.parametrize(
        ("env", "expected"),
        [
            ({}, None),
            ({"WATCHDOG_USEC": "400000"}, 0.2),
            ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
            ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
            ({"WATCHDOG_USEC": "0"}, None),
            ({"WATCHDOG_USEC": "soon"}, None),
            ({"WATCHDOG_USEC": "-5"}, None),
        ],
    )
    def test_interval(self, env: dict[str, str], expected: float | None) -> None:
        """Half of WATCHDOG_USEC, only for the process WATCHDOG_PID names."""
        assert watchdog_interval(env, pid=4242) == expected

    def test_defaults_to_this_process(self) -> None:
        """Without an explicit pid the current process is compared."""
        env = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
        assert watchdog_interval(env) == 0.5


class TestNotifyLoop:
    """The loop that pings and refreshes STATUS= on the injected clock."""

    async def test_pings_each_interval_and_sends_status_only_on_change(
        self, dgram: tuple[socket.socket, str]
    ) -> None:
        """Every tick pings; STATUS= goes out first and again only when the text changed."""
        sock, path = dgram
        clock = ManualClock()
        stop = asyncio.Event()
        text = ["watching 0 jobs"]
        task = asyncio.create_task(notify_loop(Notifier(path), stop, clock, lambda: text[0], watchdog_s=0.2))
        await _settle()
        for _ in range(3):
            await _advance(clock, 0.25)
        text[0] = "watching 1 jobs"
        await _advance(clock, 0.25)
        stop.set()
        await asyncio.wait_for(task, 5)
        assert _drain(sock) == [
            "WATCHDOG=1\nSTATUS=watching 0 jobs",
            "WATCHDOG=1",
            "WATCHDOG=1",
            "WATCHDOG=1",
            "WATCHDOG=1\nSTATUS=watching 1 jobs",
        ]

    async def test_without_watchdog_only_status_changes_are_sent(
        self, dgram: tuple[socket.socket, str]
    ) -> None:
        """No WATCHDOG_USEC: the loop only refreshes STATUS=, at its own slower interval."""
        sock, path = dgram
        clock = ManualClock()
        stop = asyncio.Event()
        task = asyncio.create_task(notify_loop(Notifier(path), stop, clock, lambda: "same", watchdog_s=None))
        await _settle()
        for _ in range(5):
            await _advance(clock, 2.5)
        stop.set()
        await asyncio.wait_for(task, 5)
        assert _drain(sock) == ["STATUS=same"]


def test_status_line_sums_counts() -> None:
    """The summary adds the per-status and per-webhook counts."""
    line = status_line({"active": 2, "unknown": 1}, 4, {"ops": 3, "slack": 1}, {"ops": 1})
    assert line == "watching 3 jobs, 4 polls in flight; 4 deliveries pending, 1 dead"
    assert (
        status_line(None, 0, None, None) == "watching 0 jobs, 0 polls in flight; 0 deliveries pending, 0 dead"
    )
