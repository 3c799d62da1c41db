"""A real Prometheus Alertmanager (Debian's prometheus-alertmanager) behind the daemon's `alertmanager`
webhook (SPEC §15): failures are posted to its `POST /api/v2/alerts`, read back from `GET /api/v2/alerts`
with the documented labels, and Alertmanager's own `webhook_configs` receiver (a loopback server here)
gets them grouped by `job_name`.

Skipped with the reason when the binary is missing; a failure instead under `WATCHER_TEST_REQUIRE_TOOLS=1`
(`.ci/run` installs the package when missing).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support import config
from tests.support.daemon import InProcessDaemon
from tests.support.eventually import eventually
from tests.support.ports import free_port
from watcher.devtools.simulate import Simulator

BINARY = "prometheus-alertmanager"
ERROR = "row 17: not an email address"


def alertmanager_binary() -> str:
    """The binary's path; skip with the reason when missing, fail when CI requires the tools."""
    path = shutil.which(BINARY) or (f"/usr/bin/{BINARY}" if Path(f"/usr/bin/{BINARY}").exists() else None)
    if path is None:
        msg = f"{BINARY} not installed (Debian package prometheus-alertmanager; .ci/run installs it)"
        if os.environ.get("WATCHER_TEST_REQUIRE_TOOLS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


class Notifications:
    """Alertmanager's webhook_configs receiver: every notification it posts, parsed."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/am", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/am"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def notifications() -> AsyncIterator[Notifications]:
    n = Notifications()
    await n.start()
    yield n
    await n.stop()


@pytest.fixture
async def alertmanager(tmp_path: Path, notifications: Notifications) -> AsyncIterator[str]:
    """A running Alertmanager on a loopback port, its own config and storage; its base URL."""
    binary = alertmanager_binary()
    port = free_port()
    cfg = tmp_path / "alertmanager.yml"
    cfg.write_text(
        "route:\n"
        "  receiver: hook\n"
        "  group_by: [job_name]\n"
        "  group_wait: 1s\n"
        "  group_interval: 1s\n"
        "  repeat_interval: 1h\n"
        "receivers:\n"
        "  - name: hook\n"
        "    webhook_configs:\n"
        f"      - url: {notifications.url}\n"
        "        send_resolved: false\n"
    )
    storage = tmp_path / "am-data"
    storage.mkdir()
    log = (tmp_path / "alertmanager.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={cfg}",
        f"--storage.path={storage}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip: a single instance
        "--log.level=warn",
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                if proc.returncode is not None:
                    raise AssertionError(
                        f"alertmanager exited: {(tmp_path / 'alertmanager.log').read_text()}"
                    )
                try:
                    async with http.get(f"{base}/-/ready") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, 30, "alertmanager ready")
        yield base
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


async def test_failures_reach_alertmanager_and_its_receiver_grouped_by_job_name(
    tmp_path: Path, sim: Simulator, alertmanager: str, notifications: Notifications
) -> None:
    """Three failed jobs, two named import.batch and one report.build: Alertmanager holds three JobFailed
    alerts with job_id, job_name, workspace, job_status and the error; its receiver gets them in one group
    per job_name."""
    assert sim.url is not None
    jobs = {
        sim.add_job(status="failed", name="import.batch", error=ERROR).id: "import.batch",
        sim.add_job(status="failed", name="import.batch", error=ERROR).id: "import.batch",
        sim.add_job(status="failed", name="report.build", error=ERROR).id: "report.build",
    }
    (tmp_path / "watchlist.txt").write_text("".join(f"{j}\n" for j in jobs))
    hooks = [{"name": "am", "url": alertmanager, "format": "alertmanager", "events": ["job.failed"]}]
    settings = config.settings(tmp_path, sim.url, port=free_port(), webhooks=hooks)
    daemon = InProcessDaemon(settings)
    await daemon.start()
    try:
        async with aiohttp.ClientSession() as http:

            async def alerts() -> list[dict[str, Any]] | None:
                async with http.get(f"{alertmanager}/api/v2/alerts") as r:
                    got: list[dict[str, Any]] = await r.json()
                return got if len(got) >= len(jobs) else None

            stored = await eventually(alerts, 30, "three alerts in alertmanager")
    finally:
        assert await daemon.stop() == 0
    by_job = {a["labels"]["job_id"]: a for a in stored}
    assert set(by_job) == set(jobs)
    for job, name in jobs.items():
        labels, annotations = by_job[job]["labels"], by_job[job]["annotations"]
        assert labels["alertname"] == "JobFailed"
        assert (labels["job_name"], labels["workspace"], labels["job_status"]) == (name, "acme", "failed")
        assert annotations["error"] == ERROR
        assert job[:8] in annotations["summary"]
        assert by_job[job]["status"]["state"] == "active"

    def grouped() -> dict[str, set[str]] | None:
        groups: dict[str, set[str]] = {}
        for note in notifications.received:
            name = note["groupLabels"]["job_name"]
            groups.setdefault(name, set()).update(a["labels"]["job_id"] for a in note["alerts"])
        want = {"import.batch": 2, "report.build": 1}
        return groups if {k: len(v) for k, v in groups.items()} == want else None

    groups = await eventually(grouped, 30, "alertmanager's notifications grouped by job_name")
    assert groups == {
        name: {j for j, n in jobs.items() if n == name} for name in ("import.batch", "report.build")
    }
    for note in notifications.received:
        assert set(note["groupLabels"]) == {"job_name"}
        assert {a["labels"]["job_name"] for a in note["alerts"]} == {note["groupLabels"]["job_name"]}
