"""A bucket per workspace (SPEC §5): `watcher run` against `watcher simulate` serving two workspaces, one of
which answers every poll with 429. The other workspace's polls keep their rate and its jobs finish and are
delivered promptly; the throttled workspace's polls slow down, and recover once the 429s stop.

Polls are counted at the simulator, per workspace (`GET /_sim/stats`).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import (
    SIM_KEY,
    SIM_SLUG,
    SIM_TOKEN,
    DaemonProc,
    Receiver,
    Sim,
    _read_listening,
    _stop,
    write_config,
)
from tests.support.eventually import eventually
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

HEALTHY, THROTTLED = SIM_SLUG, "other"
JOBS_EACH = 12


@pytest.fixture
def sim() -> Iterator[Sim]:
    """`watcher simulate` serving a second workspace with the same credentials."""
    args = ["--port", "0", "--seed", "7", "--token", SIM_TOKEN, "--api-key", SIM_KEY]
    args += ["--workspace-slug", SIM_SLUG, "--workspace", THROTTLED]
    proc = subprocess.Popen(
        [sys.executable, "-m", "watcher", "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield Sim(proc, _read_listening(proc))
    finally:
        _stop(proc)


async def polls(sim: Sim, workspace: str) -> int:
    return int((await sim.call("GET", "/_sim/stats"))["by_workspace"].get(workspace, 0))


async def rates(sim: Sim, seconds: float = 2.0) -> dict[str, float]:
    """Polls per second of each workspace over the next `seconds`."""
    before = {ws: await polls(sim, ws) for ws in (HEALTHY, THROTTLED)}
    await asyncio.sleep(seconds)
    return {ws: (await polls(sim, ws) - before[ws]) / seconds for ws in (HEALTHY, THROTTLED)}


async def throttled_gauge(api: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(api + "/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line.startswith("watcher_upstream_throttled{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('workspace="')[1].split('"')[0]] = float(value)
    return out


async def test_a_throttled_workspace_does_not_slow_the_other(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any
) -> None:
    healthy = [await sim.create_job(status="active") for _ in range(JOBS_EACH)]
    limited = [await sim.create_job(status="active", workspace=THROTTLED) for _ in range(JOBS_EACH)]
    (tmp_path / "watchlist.txt").write_text(
        "".join(f"{j}\n" for j in healthy) + "".join(f"{j} {THROTTLED}\n" for j in limited)
    )
    port = free_port()
    config = write_config(
        tmp_path,
        sim,
        receiver,
        port,
        upstream={"rate_limit_per_s": 400.0, "max_concurrency": 4, "workspaces": {THROTTLED: {}}},
        polling={"initial_interval_s": 0.05, "max_interval_s": 0.2, "error_backoff_max_s": 2.0},
    )
    daemon: DaemonProc = daemon_factory(config, port)
    daemon.start()
    await daemon.wait_ready()

    async def warmed_up() -> bool:
        return min(await polls(sim, HEALTHY), await polls(sim, THROTTLED)) >= 4 * JOBS_EACH

    await eventually(warmed_up, 20, "every job polled a few times")
    before = await rates(sim)
    assert min(before.values()) > 10, before

    await sim.call("PUT", "/_sim/faults", {"rate_limit": 1.0, "retry_after_s": 1.0, "workspace": THROTTLED})

    async def answered_429s() -> bool:
        return int((await sim.call("GET", "/_sim/stats"))["by_fault"].get("rate_limit", 0)) >= 3

    await eventually(answered_429s, 10, "429 answers to the throttled workspace")
    during = await rates(sim)
    assert during[HEALTHY] >= 0.5 * before[HEALTHY], (before, during)
    assert during[THROTTLED] <= 0.25 * before[THROTTLED], (before, during)
    assert await throttled_gauge(daemon.api) == {HEALTHY: 0.0, THROTTLED: 1.0}

    # The healthy workspace's jobs finish, and are told, while the other one is still throttled.
    for job in healthy:
        await sim.set_status(job, "success")
    got = await receiver.wait_for(lambda d: len(d) >= JOBS_EACH, timeout=10)
    assert {d["body"]["data"]["workspace"] for d in got} == {HEALTHY}

    # Once the 429s stop, the throttled workspace is polled at its rate again.
    await sim.faults()

    async def recovered() -> bool:
        return (await throttled_gauge(daemon.api)).get(THROTTLED) == 0.0

    await eventually(recovered, 30, "the throttled workspace recovered")
    after = await rates(sim)
    assert after[THROTTLED] >= 0.5 * before[THROTTLED], (before, after)
    assert daemon.stop() == 0
