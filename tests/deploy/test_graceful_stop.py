"""Graceful stop of a real `watcher run`: SIGTERM → STOPPING=1, no new polls, drain within the grace, exit 0.

Whatever did not finish within `daemon.shutdown_grace_s` stays in the store and is done after the next start.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.deploy.conftest import NotifySocket
from tests.e2e.conftest import WEBHOOK_SECRET, DaemonProc, Receiver, Sim, write_config
from tests.support.eventually import eventually
from tests.support.ports import free_port
from tests.support.standard_webhooks import TestReceiver

pytestmark = pytest.mark.slow


class GatedReceiver(TestReceiver):
    """A verifying receiver that holds every request while its gate is closed (a receiver that hangs)."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__([WEBHOOK_SECRET])
        self.gate = asyncio.Event()
        self.gate.set()
        self.held: list[str] = []

    async def _answer(self, msg_id: str, timestamp: int, body: bytes, request: web.Request) -> web.Response:
        if not self.gate.is_set():
            self.held.append(msg_id)
            await self.gate.wait()
            return web.Response(status=503, text="held")  # the sender gave up long ago
        return await super()._answer(msg_id, timestamp, body, request)


@pytest.fixture
async def gated() -> AsyncIterator[GatedReceiver]:
    rec = GatedReceiver()
    await rec.start()
    try:
        yield rec
    finally:
        rec.gate.set()
        await rec.stop()


def _config(tmp_path: Path, sim: Sim, receiver: Receiver, port: int, grace_s: float, url: str | None) -> Path:
    config = write_config(tmp_path, sim, receiver, port, webhook={"url": url} if url else None)
    text = config.read_text()
    assert "shutdown_grace_s = 5.0" in text
    config.write_text(text.replace("shutdown_grace_s = 5.0", f"shutdown_grace_s = {grace_s}"))
    return config


async def _sigterm(daemon: DaemonProc, notify: NotifySocket, within_s: float) -> tuple[float, float]:
    """SIGTERM the daemon; return (wall time of STOPPING=1, seconds until exit); assert it exits 0."""
    assert daemon.proc is not None
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    stopping = await notify.wait_for(lambda n: n.fields.get("STOPPING") == "1", 10)
    code = await asyncio.to_thread(daemon.proc.wait, within_s)
    assert code == 0, daemon.log_text()[-3000:]
    return stopping.wall, time.monotonic() - started


def _events(daemon: DaemonProc, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.log_events() if e.get("event") == name]


async def test_in_flight_poll_drains_and_no_new_poll_starts(
    tmp_path: Path,
    sim: Sim,
    receiver: Receiver,
    daemon_factory: Any,
    notify_socket: NotifySocket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow poll in flight at SIGTERM finishes, is saved and delivered; no poll starts after STOPPING=1."""
    job = await sim.create_job(status="active")
    (tmp_path / "watchlist.txt").write_text(f"{job}\n")
    port = free_port()
    daemon: DaemonProc = daemon_factory(_config(tmp_path, sim, receiver, port, 10.0, None), port)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    daemon.start()
    await notify_socket.wait_for(lambda n: n.fields.get("READY") == "1", 30)

    async def finished_polls() -> int:
        return len(await sim.requests(job))

    async def slow_in_flight(before: int) -> bool:
        # One job's polls never overlap: once a poll has finished after the fault, the one in flight started
        # after it, so it is slow.
        stats = await sim.call("GET", "/_sim/stats")
        return await finished_polls() > before and stats["inflight"] >= 1

    await eventually(lambda: _at_least(finished_polls(), 3), 15, "the job being polled")
    await sim.faults(slow=1.0, slow_s=1.5)  # under the 2 s upstream timeout: slow, not failed
    before = await finished_polls()
    await eventually(lambda: slow_in_flight(before), 15, "a slow poll in flight")
    await sim.set_status(job, "success")  # the in-flight poll answers with this when its time is over

    stopping_wall, took = await _sigterm(daemon, notify_socket, within_s=15)

    requests = await sim.requests(job)
    assert [r for r in requests if r["started_at"] > stopping_wall + 0.05] == [], "polled after STOPPING=1"
    assert any(r["started_at"] < stopping_wall < r["finished_at"] for r in requests), "no poll was in flight"
    assert took < 10.0, f"the drain took {took:.1f}s"
    assert _events(daemon, "daemon.grace_expired") == []
    assert _events(daemon, "daemon.drained")
    assert [e["status"] for e in _events(daemon, "job.transition")] == ["active", "success"]
    # The drained poll's result was saved and its event delivered before the process exited: deliveries
    # stop only after the scheduler has drained.
    got = receiver.deliveries()
    assert [(d["type"], d["body"]["data"]["previous_status"]) for d in got] == [("job.success", "active")]


async def test_delivery_in_flight_finishes_within_the_grace(
    tmp_path: Path,
    sim: Sim,
    receiver: Receiver,
    gated: GatedReceiver,
    daemon_factory: Any,
    notify_socket: NotifySocket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow receiver (1.5 s) answering during the stop still gets its delivery; exit 0 without a cut."""
    gated.delay_s = 1.5
    job = await sim.create_job(status="success")
    (tmp_path / "watchlist.txt").write_text(f"{job}\n")
    port = free_port()
    daemon: DaemonProc = daemon_factory(_config(tmp_path, sim, receiver, port, 10.0, gated.url), port)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    daemon.start()
    await eventually(lambda: gated.in_progress > 0, 20, "a delivery reaching the receiver")

    _, took = await _sigterm(daemon, notify_socket, within_s=15)

    assert [d.type for d in gated.deliveries] == ["job.success"]
    assert _events(daemon, "daemon.grace_expired") == []
    assert took < 10.0


async def test_unfinished_delivery_stays_in_the_store_for_the_next_start(
    tmp_path: Path,
    sim: Sim,
    receiver: Receiver,
    gated: GatedReceiver,
    daemon_factory: Any,
    notify_socket: NotifySocket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A receiver that hangs past the grace is cut off, exit is still 0, and the next start delivers it."""
    gated.gate.clear()
    job = await sim.create_job(status="failed", error="row 7: bad e-mail")
    (tmp_path / "watchlist.txt").write_text(f"{job}\n")
    port = free_port()
    grace_s = 1.0
    daemon: DaemonProc = daemon_factory(_config(tmp_path, sim, receiver, port, grace_s, gated.url), port)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    daemon.start()
    await eventually(lambda: gated.held, 20, "a delivery reaching the receiver")

    _, took = await _sigterm(daemon, notify_socket, within_s=grace_s + 15)

    assert grace_s <= took < grace_s + 10, f"stop took {took:.1f}s"
    assert _events(daemon, "daemon.grace_expired"), "the hanging delivery should have been cut at the grace"
    assert gated.deliveries == []
    gated.gate.set()  # the receiver recovers; the next start finds the delivery still pending
    daemon.start()
    await gated.wait_for(1, within_s=20)
    assert gated.deliveries[0].id == gated.held[0], "the same event (same webhook-id) is delivered"
    assert gated.deliveries[0].type == "job.failed"
    assert daemon.stop() == 0


async def _at_least(count: Awaitable[int], n: int) -> bool:
    return await count >= n
