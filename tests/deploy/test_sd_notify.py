"""A real `watcher run` speaks sd_notify to a temporary NOTIFY_SOCKET: READY, STATUS, WATCHDOG, STOPPING."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import statistics
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.deploy.conftest import NotifySocket
from tests.e2e.conftest import DaemonProc, Receiver, Sim, write_config
from tests.support.eventually import eventually
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

WATCHDOG_USEC = 400_000  # systemd's WatchdogSec=0.4s: the daemon must ping every 0.2 s


async def test_ready_status_watchdog_and_stopping(
    tmp_path: Path,
    sim: Sim,
    receiver: Receiver,
    daemon_factory: Any,
    notify_socket: NotifySocket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """READY=1 once /readyz is ready, pings at half of WATCHDOG_USEC, STATUS updates, STOPPING=1, exit 0."""
    job = await sim.create_job(status="active")
    (tmp_path / "watchlist.txt").write_text(f"{job}\n")
    port = free_port()
    daemon: DaemonProc = daemon_factory(write_config(tmp_path, sim, receiver, port), port)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)  # the child inherits the environment
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    daemon.start()

    ready = await notify_socket.wait_for(lambda n: n.fields.get("READY") == "1", 30)
    async with aiohttp.ClientSession() as s, s.get(daemon.api + "/readyz") as r:
        assert r.status == 200, "READY=1 was sent before /readyz was ready"
    assert ready.fields["STATUS"].startswith("watching ")
    # The housekeeping loop counts the watch from the list; STATUS= follows within a few seconds.
    await notify_socket.wait_for(lambda n: n.fields.get("STATUS", "").startswith("watching 1 jobs"), 15)
    # Ten pings after READY=1 (about 2 s), counted rather than slept for.
    await eventually(
        lambda: len([n for n in notify_socket.with_key("WATCHDOG") if n.at >= ready.at]) >= 10, 20
    )

    daemon.signal(signal.SIGTERM)
    stopping = await notify_socket.wait_for(lambda n: n.fields.get("STOPPING") == "1", 15)
    assert await asyncio.to_thread(daemon.proc.wait, 20) == 0  # type: ignore[union-attr]
    assert stopping.fields["STATUS"].startswith("stopping: draining")

    pings = [n.at for n in notify_socket.with_key("WATCHDOG") if ready.at <= n.at]
    assert all(n.fields["WATCHDOG"] == "1" for n in notify_socket.with_key("WATCHDOG"))
    assert pings and max(pings) < stopping.at, "no watchdog ping may follow STOPPING=1"
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    window = stopping.at - ready.at
    assert len(gaps) >= 5, f"only {len(pings)} pings in {window:.1f}s"
    interval = WATCHDOG_USEC / 2e6
    assert 0.75 * interval <= statistics.median(gaps) <= 1.5 * interval, gaps
    # systemd's contract: never longer than WATCHDOG_USEC between two pings, or the service is killed.
    assert max(gaps) < WATCHDOG_USEC / 1e6, gaps
    assert len(pings) <= window / interval * 1.5 + 2, "pinging much faster than asked is wasteful"
    assert len(notify_socket.with_key("READY")) == 1
    assert len(notify_socket.with_key("STOPPING")) == 1


async def test_abstract_socket_and_no_watchdog_without_usec(
    tmp_path: Path,
    sim: Sim,
    receiver: Receiver,
    daemon_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An '@name' NOTIFY_SOCKET is in the abstract namespace; without WATCHDOG_USEC nothing pings."""
    name = f"job-watcher-test-{os.getpid()}-{free_port()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.setblocking(False)
        ns = NotifySocket(sock, "@" + name)
        collector = asyncio.create_task(ns.collect())
        try:
            port = free_port()
            daemon: DaemonProc = daemon_factory(
                write_config(tmp_path, sim, receiver, port, watchlist=False), port
            )
            monkeypatch.setenv("NOTIFY_SOCKET", ns.address)
            monkeypatch.delenv("WATCHDOG_USEC", raising=False)
            daemon.start()
            await ns.wait_for(lambda n: n.fields.get("READY") == "1", 30)
            # A known later event instead of a pause: a watch registered now changes the status line, and
            # the notify loop sends it on one of its next rounds; none of those rounds may ping.
            job = await sim.create_job(status="active")
            async with (
                aiohttp.ClientSession() as s,
                s.post(daemon.api + "/v1/watches", json={"job_id": job}) as r,
            ):
                assert r.status == 201, await r.text()
            await ns.wait_for(lambda n: n.fields.get("STATUS", "").startswith("watching 1 jobs"), 15)
            assert daemon.stop() == 0
            await ns.wait_for(lambda n: n.fields.get("STOPPING") == "1", 5)
            assert ns.with_key("WATCHDOG") == []
        finally:
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)
