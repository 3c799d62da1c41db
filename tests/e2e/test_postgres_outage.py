"""A PostgreSQL outage never kills `watcher run` (SPEC §16, issue 12 item 3).

The daemon reaches the real PostgreSQL through a loopback TCP proxy (tests/support/tcp_proxy.py) that the
test cuts (refused connects, reset connections) and restores; the server itself is never stopped. While the
store is out: /readyz 503 and `watcher_ready` 0, no polls, nothing lost; afterwards everything resumes by
itself and every event is delivered.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DaemonProc, Receiver, Sim, write_config
from tests.e2e.outage_support import (
    assert_all_json,
    every_end_delivered,
    metric,
    metric_is,
    probe,
    readyz_is,
    scripted_jobs,
    store_retried,
    until,
)
from tests.support.ports import free_port
from tests.support.postgres import pg_schema
from tests.support.tcp_proxy import TcpProxy
from watcher.store.postgres.conn import parse_url

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
async def proxied_url() -> AsyncIterator[tuple[str, TcpProxy]]:
    """A fresh schema's store URL that goes through a proxy the test controls."""
    async with pg_schema("outage") as url:
        target = parse_url(url)
        host, _, port = target.where.split("/")[0].rpartition(":")
        proxy = TcpProxy(host, int(port))
        await proxy.start()
        try:
            yield url.replace(f"@{host}:{port}/", f"@127.0.0.1:{proxy.port}/"), proxy
        finally:
            await proxy.close()


def pg_config(
    tmp_path: Path, sim: Sim, receiver: Receiver, port: int, url: str, lease_s: float | None = None
) -> Path:
    """The e2e config with the store at `url` (and `[daemon] lease_s` if given)."""
    daemon = {} if lease_s is None else {"lease_s": lease_s}
    return write_config(tmp_path, sim, receiver, port, store_url=url, daemon=daemon)


async def polls_between(sim: Sim, start: float, end: float) -> int:
    """Upstream requests the simulator recorded between two wall-clock times."""
    return sum(1 for r in await sim.requests() if start <= float(r["started_at"]) < end)


async def test_outage_during_polling_loses_nothing(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any, proxied_url: tuple[str, TcpProxy]
) -> None:
    """The database goes away for several seconds while jobs finish: the daemon stays up, is not ready,
    stops polling, and once it is back delivers every event; every log line is JSON."""
    url, proxy = proxied_url
    jobs = await scripted_jobs(sim, 30, first_s=1.0, spread_s=8.0)
    (tmp_path / "watchlist.txt").write_text("\n".join(jobs) + "\n")
    port = free_port()
    # A claim whose answer the cut loses leaves its watches leased to nobody until the lease runs out (as a
    # crashed replica's would): with the default 60 s lease that outlasted the 40 s wait for the
    # deliveries below whenever the cut fell on a claim. A short lease keeps that wait short.
    config = pg_config(tmp_path, sim, receiver, port, url, lease_s=3.0)
    daemon: DaemonProc = daemon_factory(config, port)
    daemon.start()
    await daemon.wait_ready()
    await asyncio.sleep(1.5)  # steady polling, the first jobs finishing

    await proxy.cut()
    cut_at = time.time()
    await until(lambda: readyz_is(daemon.api, 503), 15, "/readyz 503 during the outage")
    await until(lambda: metric_is(daemon.api, "watcher_ready", 0.0), 15, "watcher_ready 0 during the outage")
    await asyncio.sleep(4.0)  # far longer than the old 0.15 s of retries
    assert daemon.alive(), daemon.log_text()[-3000:]
    quiet_from = cut_at + 2.0
    restored_at = time.time()
    assert await polls_between(sim, quiet_from, restored_at) == 0, "polled while nothing could be saved"

    await proxy.restore()
    await until(lambda: readyz_is(daemon.api, 200), 20, "/readyz 200 once the database is back")
    await until(lambda: metric_is(daemon.api, "watcher_ready", 1.0), 15, "watcher_ready 1 once it is back")
    await every_end_delivered(receiver, jobs, timeout=40)
    unreachable = await metric(daemon.api, 'watcher_store_errors_total{kind="unreachable"}')
    assert unreachable is not None and unreachable > 0
    assert daemon.stop() == 0
    events = assert_all_json(daemon.log_path)
    outages = [e for e in events if e["event"] == "store.unavailable"]
    recoveries = [e for e in events if e["event"] == "store.recovered"]
    assert len(outages) == 1 and outages[0]["kind"] == "unreachable", outages
    assert len(recoveries) == 1 and recoveries[0]["duration_s"] >= 3.0, recoveries
    assert "postgres@" not in daemon.log_text()  # the URL's user part never reaches the log


async def test_connections_dropped_mid_transaction(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any, proxied_url: tuple[str, TcpProxy]
) -> None:
    """Every connection is reset again and again while saves, claims and deliveries are in flight: the
    pool replaces them, the daemon stays up, and every event is delivered, a duplicate only with its id
    (a save re-run after its commit answer was lost is fenced).

    A claim whose answer was lost leaves its watches leased to nobody until the lease runs out, as a
    crashed replica's would: the short lease keeps that wait short here.
    """
    url, proxy = proxied_url
    jobs = await scripted_jobs(sim, 40, first_s=0.5, spread_s=4.0)
    (tmp_path / "watchlist.txt").write_text("\n".join(jobs) + "\n")
    port = free_port()
    config = pg_config(tmp_path, sim, receiver, port, url, lease_s=3.0)
    daemon: DaemonProc = daemon_factory(config, port)
    daemon.start()
    await daemon.wait_ready()
    deadline = time.monotonic() + 6.0
    while time.monotonic() < deadline:
        await asyncio.sleep(0.15)
        await proxy.reset_all()
        assert daemon.alive(), daemon.log_text()[-3000:]
    assert proxy.resets >= 20, proxy.resets
    await every_end_delivered(receiver, jobs, timeout=40)
    await until(lambda: readyz_is(daemon.api, 200), 20, "/readyz 200 after the resets")
    assert daemon.stop() == 0
    assert_all_json(daemon.log_path)


async def test_start_while_the_database_is_down(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any, proxied_url: tuple[str, TcpProxy]
) -> None:
    """Started with the database unreachable, the daemon serves /healthz and /metrics, says 503 on
    /readyz, and starts by itself (migrating the new schema) once the database is reachable."""
    url, proxy = proxied_url
    await proxy.cut()
    jobs = await scripted_jobs(sim, 5, first_s=1.0, spread_s=1.0)
    (tmp_path / "watchlist.txt").write_text("\n".join(jobs) + "\n")
    port = free_port()
    daemon: DaemonProc = daemon_factory(pg_config(tmp_path, sim, receiver, port, url), port)
    daemon.start()
    await until(lambda: readyz_is(daemon.api, 503), 20, "/readyz 503 while the database is down")
    status, body, _ = await probe(daemon.api, "/healthz")
    assert status == 200, body
    assert await metric(daemon.api, "watcher_ready") == 0.0
    status, body, _ = await probe(daemon.api, "/readyz")
    assert status == 503 and body["store"]["kind"] == "unreachable", body
    await store_retried(daemon.api, 2)  # it keeps trying, stays up, and polls nothing meanwhile
    assert daemon.alive(), daemon.log_text()[-3000:]
    assert await sim.requests() == []  # nothing polled before the store is open

    await proxy.restore()
    await until(lambda: readyz_is(daemon.api, 200), 20, "/readyz 200 once the database is reachable")
    await every_end_delivered(receiver, jobs, timeout=30)
    assert daemon.stop() == 0
    events = [e["event"] for e in assert_all_json(daemon.log_path)]
    assert events.index("api.listening") < events.index("store.recovered") < events.index("daemon.started")


async def test_sigterm_while_waiting_for_the_database(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any, proxied_url: tuple[str, TcpProxy]
) -> None:
    """SIGTERM while the daemon waits for an unreachable database stops it at once with status 0."""
    url, proxy = proxied_url
    await proxy.cut()
    (tmp_path / "watchlist.txt").write_text("")
    port = free_port()
    daemon: DaemonProc = daemon_factory(pg_config(tmp_path, sim, receiver, port, url), port)
    daemon.start()
    await until(lambda: readyz_is(daemon.api, 503), 20, "/readyz 503 while the database is down")
    await store_retried(daemon.api, 2)  # waiting out the outage, between two attempts
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.proc is not None

    async def exited() -> bool:
        return daemon.proc is not None and daemon.proc.poll() is not None

    await until(exited, 10, "exit after SIGTERM")
    assert daemon.proc.returncode == 0, daemon.log_text()[-3000:]
    assert time.monotonic() - started < 8.0
    events = [e["event"] for e in assert_all_json(daemon.log_path)]
    assert "daemon.stopping" in events and "daemon.stopped" in events
