"""A bucket per workspace (SPEC §5): the real daemon against the simulator with two workspaces, one of which
answers every poll with 429. The other workspace's polls keep their rate and its jobs finish promptly; the
throttled workspace's polls slow down, and recover once the 429s stop.

Polls are counted at the simulator, per workspace (`GET /_sim/stats`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import SECRET
from tests.support import config
from tests.support.daemon import InProcessDaemon
from tests.support.eventually import eventually
from tests.support.ports import free_port
from watcher.devtools.receiver import Receiver
from watcher.devtools.simulate import Simulator

pytestmark = pytest.mark.slow

HEALTHY, THROTTLED = "acme", "other"
JOBS_EACH = 12


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(workspace_slug=HEALTHY, workspaces={THROTTLED: ("other-token", "other-key")})
    await s.start()
    yield s
    await s.stop()


class Upstream:
    """The simulator through its control API, as a user's test would drive `watcher simulate`."""

    def __init__(self, sim: Simulator, http: aiohttp.ClientSession) -> None:
        assert sim.url is not None
        self.root = sim.url.removesuffix("/api/v2")
        self.http = http

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.root + path, json=body) as r:
            assert r.status < 300, f"{method} {path} -> {r.status}: {await r.text()}"
            return await r.json() if r.status != 204 else None

    async def polls(self, workspace: str) -> int:
        return int((await self.call("GET", "/_sim/stats"))["by_workspace"].get(workspace, 0))

    async def rates(self, seconds: float = 2.0) -> dict[str, float]:
        """Polls per second of each workspace over the next `seconds`."""
        before = {ws: await self.polls(ws) for ws in (HEALTHY, THROTTLED)}
        await asyncio.sleep(seconds)
        return {ws: (await self.polls(ws) - before[ws]) / seconds for ws in (HEALTHY, THROTTLED)}


async def throttled_gauge(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with http.get(base + "/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line.startswith("watcher_upstream_throttled{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('workspace="')[1].split('"')[0]] = float(value)
    return out


async def test_a_throttled_workspace_does_not_slow_the_other(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    healthy = [sim.add_job(status="active").id for _ in range(JOBS_EACH)]
    limited = [sim.add_job(status="active", workspace=THROTTLED).id for _ in range(JOBS_EACH)]
    (tmp_path / "watchlist.txt").write_text(
        "".join(f"{j}\n" for j in healthy) + "".join(f"{j} {THROTTLED}\n" for j in limited)
    )
    assert sim.url is not None and receiver.url is not None
    sections: config.Sections = {
        "upstream": {"rate_limit_per_s": 400.0, "max_concurrency": 4},
        "upstream.workspaces.other": {"token": "other-token", "api_key": "other-key"},
        "polling": {"initial_interval_s": 0.05, "max_interval_s": 0.2, "error_backoff_max_s": 2.0},
    }
    hook = {"name": "ops", "url": receiver.url, "secret": SECRET}
    settings = config.settings(tmp_path, sim.url, port=free_port(), webhooks=[hook], sections=sections)
    daemon = InProcessDaemon(settings)
    async with aiohttp.ClientSession() as http:
        up = Upstream(sim, http)
        await daemon.start()

        async def warmed_up() -> bool:
            return min(await up.polls(HEALTHY), await up.polls(THROTTLED)) >= 4 * JOBS_EACH

        await eventually(warmed_up, 20, "every job polled a few times")
        before = await up.rates()
        assert min(before.values()) > 10, before

        every_429 = {"rate_limit": 1.0, "retry_after_s": 1.0, "workspace": THROTTLED}
        await up.call("PUT", "/_sim/faults", every_429)

        async def answered_429s() -> bool:
            return int((await up.call("GET", "/_sim/stats"))["by_fault"].get("rate_limit", 0)) >= 3

        await eventually(answered_429s, 10, "429 answers to the throttled workspace")
        during = await up.rates()
        assert during[HEALTHY] >= 0.5 * before[HEALTHY], (before, during)
        assert during[THROTTLED] <= 0.25 * before[THROTTLED], (before, during)
        assert await throttled_gauge(http, daemon.base) == {HEALTHY: 0.0, THROTTLED: 1.0}

        # The healthy workspace's jobs finish, and are told, while the other one is still throttled.
        for job in healthy:
            sim.set_status(job, "success")
        await eventually(lambda: len(receiver.deliveries) >= JOBS_EACH, 10, "the healthy jobs delivered")
        assert {str(d.body["data"]["workspace"]) for d in receiver.deliveries} == {HEALTHY}

        # Once the 429s stop, the throttled workspace is polled at its rate again.
        await up.call("PUT", "/_sim/faults", {})

        async def recovered() -> bool:
            return (await throttled_gauge(http, daemon.base)).get(THROTTLED) == 0.0

        await eventually(recovered, 30, "the throttled workspace recovered")
        after = await up.rates()
        assert after[THROTTLED] >= 0.5 * before[THROTTLED], (before, after)
        assert await daemon.stop() == 0
