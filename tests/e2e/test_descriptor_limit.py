"""`watcher run` under a low descriptor limit, its API flooded with idle connections (SPEC §16): webhook
deliveries still go out, because the API's connections are capped below the limit minus a reserve, and
the log stays a few lines long."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import DaemonProc, Receiver, Sim, free_port, write_config

pytestmark = pytest.mark.slow

NOFILE = 256
IDLE = 300


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


class _LimitedDaemon(DaemonProc):
    """The daemon with soft and hard RLIMIT_NOFILE at `NOFILE` (it cannot raise them)."""

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watcher", "run", "-c", str(self.config)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self.config.parent,
                preexec_fn=_low_nofile,
            )


@pytest.fixture
def limited() -> Iterator[list[_LimitedDaemon]]:
    """The daemons a test starts; any still running at the end (a failed assertion) is killed."""
    made: list[_LimitedDaemon] = []
    yield made
    for d in made:
        if d.alive():
            d.kill()


async def test_idle_connections_past_the_limit_leave_deliveries_working(
    tmp_path: Path, sim: Sim, receiver: Receiver, limited: list[_LimitedDaemon]
) -> None:
    """300 idle API connections against a limit of 256 descriptors: every delivery arrives, `/healthz`
    answers once they are gone, and the log holds no traceback and no flood of accept errors."""
    port = free_port()
    config = write_config(tmp_path, sim, receiver, port, upstream={"max_concurrency": 8})
    text = config.read_text().replace("[api]\n", "[api]\nheader_timeout_s = 60.0\n")
    config.write_text(text)
    (tmp_path / "watchlist.txt").write_text("")
    daemon = _LimitedDaemon(config, tmp_path / "daemon.log", port)
    limited.append(daemon)
    daemon.start()
    held: list[socket.socket] = []
    try:
        await daemon.wait_ready()
        for _ in range(IDLE):  # non-blocking: the ones past the cap and the backlog just stay pending
            sock = socket.socket()
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", port))
            held.append(sock)
        await asyncio.sleep(1.0)
        jobs = [await sim.create_job(status="active", name="customer.createBatch") for _ in range(10)]
        (tmp_path / "watchlist.txt").write_text("".join(f"{j}\n" for j in jobs))
        await asyncio.sleep(1.0)
        for job in jobs:
            await sim.set_status(job, "failed", error="boom")
        got = await receiver.wait_for(
            lambda ds: {d["body"]["data"]["job"]["id"] for d in ds} >= set(jobs), 30
        )
        assert {d["body"]["data"]["job"]["id"] for d in got} >= set(jobs)
    finally:
        for sock in held:
            sock.close()
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(daemon.api + "/healthz", timeout=aiohttp.ClientTimeout(2)) as r:
                    if r.status == 200:
                        break
            assert time.monotonic() - started < 20, "healthz did not answer after the idle connections left"
            await asyncio.sleep(0.1)
    assert daemon.stop() == 0
    log = daemon.log_text()
    events = [e["event"] for e in daemon.log_events()]
    lowered = [e for e in daemon.log_events() if e["event"] == "api.max_connections_lowered"]
    assert lowered and lowered[0]["cap"] < NOFILE - 100, lowered
    assert "Traceback" not in log, log[-3000:]
    assert events.count("api.accept_failed") <= 3, events
    assert len(log.splitlines()) < 300, len(log.splitlines())
