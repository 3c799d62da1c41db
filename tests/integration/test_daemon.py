"""The daemon in-process: its HTTP endpoints, its supervisor, and restoring work after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from tests.integration.conftest import SECRET
from tests.support import config
from tests.support.daemon import InProcessDaemon
from tests.support.eventually import eventually
from tests.support.ports import free_port
from watcher.config import Settings
from watcher.daemon import Daemon
from watcher.devtools.receiver import ReceivedDelivery, Receiver
from watcher.devtools.simulate import Simulator
from watcher.errors import StartupError, StoreError
from watcher.models import Delivery
from watcher.store.base import StoreCounts
from watcher.store.sqlite import SQLiteStore


def settings_for(
    tmp_path: Path, sim_url: str, hook_url: str, port: int, sections: config.Sections | None = None
) -> Settings:
    """The fast test configuration with one webhook, `ops`."""
    hook = {"name": "ops", "url": hook_url, "secret": SECRET}
    return config.settings(tmp_path, sim_url, port=port, webhooks=[hook], sections=sections)


async def test_endpoints_and_graceful_stop(tmp_path: Path, sim: Simulator, receiver: Receiver) -> None:
    """healthz, readyz and metrics answer while running; a stop request drains and returns 0."""
    job = sim.add_job(status="active").id
    (tmp_path / "watchlist.txt").write_text(job + "\n")
    port = free_port()
    assert receiver.url is not None
    settings = settings_for(tmp_path, sim_url=_sim_url(sim), hook_url=receiver.url, port=port)
    # Gauges refreshed every 50 ms instead of every second: the test waits for them, not a fixed time.
    daemon = InProcessDaemon(settings, housekeeping_pause_s=0.05)
    base = daemon.base
    async with aiohttp.ClientSession() as http:
        await daemon.start()
        async with http.get(base + "/healthz") as r:
            assert r.status == 200
            assert (await r.json())["status"] == "ok"
        async with http.get(base + "/readyz") as r:
            assert r.status == 200
        await eventually(lambda: len(sim.requests(job)) >= 2)
        sim.set_status(job, "success")
        await eventually(lambda: len(receiver.deliveries) == 1)

        async def refreshed() -> str | None:  # the store-derived gauges count the finished job
            async with http.get(base + "/metrics") as r:
                text = await r.text()
            # The receiver notes the delivery before its answer reaches the daemon, which counts the
            # delivery once the answer is in and the store has it: wait for that too.
            delivered = 'watcher_webhook_deliveries_total{outcome="success",webhook="ops"} 1.0' in text
            return text if delivered and 'watcher_watched_jobs{status="active"} 0.0' in text else None

        text = await eventually(refreshed, 15, "the gauges refreshed")
    assert 'watcher_jobs_finished_total{status="success"} 1.0' in text
    assert 'watcher_transitions_total{status="success"} 1.0' in text
    assert 'watcher_webhook_deliveries_total{outcome="success",webhook="ops"} 1.0' in text
    assert 'watcher_watched_jobs{status="active"} 0.0' in text
    assert "watcher_build_info{version=" in text
    assert await daemon.stop() == 0


class _FailingStore(SQLiteStore):
    """A real SQLite store whose delivery claims start failing: with a store error (a row it cannot read
    back, say), or with `_Bug`, which stands for a bug outside any item that no loop can contain."""

    fail: BaseException | None = None

    async def claim_deliveries(self, now: float, limit: int, lease_s: float) -> list[Delivery]:
        if self.fail is not None:
            raise self.fail
        return await super().claim_deliveries(now, limit, lease_s)


class _Bug(BaseException):
    """Not an `Exception`: what the loops' containment deliberately lets through."""


async def test_a_failing_claim_makes_the_daemon_not_ready_but_never_ends_it(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """Claims that keep failing with a store error: /readyz 503 and logged, the loop backs off and lives;
    once they work again the daemon is ready, and a stop still exits 0 (SPEC §16)."""
    (tmp_path / "watchlist.txt").write_text("")
    assert receiver.url is not None
    settings = settings_for(tmp_path, _sim_url(sim), receiver.url, free_port())
    store = _FailingStore(tmp_path / "w.db")
    daemon = InProcessDaemon(settings, store=store)
    base = daemon.base

    async def readyz() -> int:
        async with aiohttp.ClientSession() as http, http.get(base + "/readyz") as r:
            return r.status

    with capture_logs() as logs:
        await daemon.start()
        store.fail = StoreError("database disk image is malformed")
        await eventually(lambda: any(e["event"] == "delivery.claim_failed" for e in logs))
        await eventually(lambda: _is(readyz(), 503), 15, "/readyz 503")
        assert daemon.running
        store.fail = None
        await eventually(lambda: _is(readyz(), 200), 15, "/readyz 200 again")
        assert await daemon.stop(10) == 0
    assert not [e for e in logs if e["event"] == "daemon.loop_died"]
    failed = [e for e in logs if e["event"] == "delivery.claim_failed"]
    assert failed and failed[0]["exc_info"] is not None
    assert [e for e in logs if e["event"] == "store.recovered"]


class _BadCountsStore(SQLiteStore):
    """A real SQLite store whose aggregates fail for a while with a request error (not an outage)."""

    fail = False

    async def counts(self, on_snapshot: Callable[[], None] | None = None) -> StoreCounts:
        if self.fail:
            raise StoreError("aggregate refused")
        return await super().counts(on_snapshot)


async def test_housekeeping_survives_a_failing_aggregate(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """The gauges' refresh failing is logged and counted, and the loop goes on; a stop still exits 0."""
    (tmp_path / "watchlist.txt").write_text("")
    assert receiver.url is not None
    settings = settings_for(tmp_path, _sim_url(sim), receiver.url, free_port())
    store = _BadCountsStore(tmp_path / "w.db")
    registry = CollectorRegistry()
    daemon = InProcessDaemon(settings, registry=registry, store=store)
    with capture_logs() as logs:
        await daemon.start()
        store.fail = True
        await eventually(lambda: sum(e["event"] == "housekeeping.failed" for e in logs) >= 2)
        assert daemon.running
        store.fail = False
        assert await daemon.stop(10) == 0
    errors = registry.get_sample_value("watcher_internal_errors_total", {"loop": "housekeeping"})
    assert errors is not None and errors >= 2
    assert not [e for e in logs if e["event"] == "daemon.loop_died"]


async def test_supervisor_stops_the_daemon_when_a_loop_dies(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """A loop that dies of what no containment catches stops the whole daemon with exit code 1, so that
    systemd or Kubernetes restarts it."""
    (tmp_path / "watchlist.txt").write_text("")
    assert receiver.url is not None
    settings = settings_for(tmp_path, _sim_url(sim), receiver.url, free_port())
    store = _FailingStore(tmp_path / "w.db")
    daemon = InProcessDaemon(settings, store=store)
    with capture_logs() as logs:
        await daemon.start()
        store.fail = _Bug("a bug outside any item")
        assert daemon.task is not None
        code = await asyncio.wait_for(daemon.task, 10)
    assert code == 1
    died = [e for e in logs if e["event"] == "daemon.loop_died"]
    assert died and died[0]["loop"] == "delivery"
    assert "a bug outside any item" in died[0]["error"]


async def test_restart_restores_watches_and_pending_deliveries(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """Events detected while the receiver is down survive a stop and are delivered after the next start."""
    jobs = [sim.add_job(status="active").id for _ in range(3)]
    (tmp_path / "watchlist.txt").write_text("\n".join(jobs) + "\n")
    assert receiver.url is not None
    settings = settings_for(tmp_path, _sim_url(sim), receiver.url, free_port())
    receiver.set_status(503)
    first = InProcessDaemon(settings)
    await first.start()
    await eventually(lambda: all(len(sim.requests(j)) >= 1 for j in jobs))
    sim.set_status(jobs[0], "failed", error="boom")
    await eventually(lambda: receiver.attempts and sum(receiver.attempts.values()) >= 2)
    assert await first.stop() == 0
    assert receiver.deliveries == []
    receiver.set_status(None)
    sim.set_status(jobs[1], "success")
    second = InProcessDaemon(settings)
    await second.start()
    await eventually(lambda: len(receiver.deliveries) == 2)
    got = {_job_of(d): d.type for d in receiver.deliveries}
    assert got == {jobs[0]: "job.failed", jobs[1]: "job.success"}
    assert await second.stop() == 0


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected


def _sim_url(sim: Simulator) -> str:
    assert sim.url is not None
    return sim.url


def _job_of(d: ReceivedDelivery) -> str:
    return str(d.body["data"]["job"]["id"])


async def test_non_loopback_without_tokens_refused(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    assert receiver.url is not None
    settings = settings_for(tmp_path, _sim_url(sim), receiver.url, free_port())
    settings.api.listen = "0.0.0.0:0"
    with pytest.raises(StartupError, match=r"api\.tokens"):
        await Daemon(settings, handle_signals=False, registry=CollectorRegistry()).run()


async def test_second_workspace_uses_its_own_credentials(tmp_path: Path, receiver: Receiver) -> None:
    """A watch-list line `<id> other` is polled with the `other` workspace's token, key and slug."""
    sim = Simulator(workspace_slug="acme", workspaces={"other": ("other-token", "other-key")})
    url = await sim.start()
    try:
        mine = sim.add_job(status="success").id
        theirs = sim.add_job(status="failed", workspace="other").id
        (tmp_path / "watchlist.txt").write_text(f"{mine}\n{theirs} other\n")
        assert receiver.url is not None
        other = {"upstream.workspaces.other": {"token": "other-token", "api_key": "other-key"}}
        settings = settings_for(tmp_path, url, receiver.url, free_port(), other)
        daemon = InProcessDaemon(settings)
        await daemon.start()
        await eventually(lambda: len(receiver.deliveries) == 2)
        got = {_job_of(d): (d.type, d.body["data"]["workspace"]) for d in receiver.deliveries}
        assert got == {mine: ("job.success", "acme"), theirs: ("job.failed", "other")}
        assert {r["workspace"] for r in sim.requests(theirs)} == {"other"}
        assert await daemon.stop() == 0
    finally:
        await sim.stop()
