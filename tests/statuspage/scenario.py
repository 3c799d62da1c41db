"""A real daemon with watches in every interesting state, and a headless Chromium to look at its page.

Shared by the status-page tests and `python -m tests.statuspage.screenshot` (the README screenshot): the
daemon runs in-process on a SQLite store against the simulated upstream and a verifying receiver, all on
127.0.0.1. Nothing of ours is mocked.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, async_playwright

from tests.support import config
from tests.support.daemon import InProcessDaemon
from tests.support.eventually import eventually
from watcher.config import load_config
from watcher.daemon import Daemon
from watcher.devtools.receiver import Receiver
from watcher.devtools.simulate import Simulator
from watcher.models import Registration, Source
from watcher.store.sqlite import SQLiteStore

SECRET = "whsec_" + base64.b64encode(b"status-page-webhook-secret").decode()
TOKEN = "page-token-5ecret-0123456789"
HOSTILE_LABEL = '<script>alert("label")</script>'
HOSTILE_ERROR = 'row 1432: invalid e-mail "<img src=x onerror=alert(1)>"'
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Scene:
    """The running daemon and what the tests need to check the page against."""

    base_url: str
    store: SQLiteStore
    sim: Simulator
    receiver: Receiver
    daemon: Daemon
    jobs: dict[str, str]  # role (active, queued, success, failed, missing) -> job id
    dead_id: int  # the dead delivery of the failed job


def _config(tmp_path: Path, sim_url: str, hook_url: str, tokens: list[str]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return config.write_config(
        tmp_path,
        sim_url,
        webhooks=[{"name": "ops", "url": hook_url, "secret": SECRET}],
        sections={
            "polling": {"not_found_limit": 2},
            "api": {"tokens": tokens} if tokens else {},
            "store": {"url": f"sqlite:///{tmp_path / 'watcher.db'}"},
            "watchlist": None,
        },
        name="watcher.toml",
    )


@contextlib.asynccontextmanager
async def running_scene(
    tmp_path: Path, *, tokens: list[str] | None = None, hostile: bool = True
) -> AsyncIterator[Scene]:
    """Start everything, bring watches into active, queued, success, failed (dead delivery) and missing.

    `hostile` puts markup into a label and an upstream error, to check that the page escapes them.
    """
    async with contextlib.AsyncExitStack() as stack:
        sim = Simulator(workspace_slug="acme")
        sim_url = await sim.start()
        stack.push_async_callback(sim.stop)
        receiver = Receiver([SECRET])
        hook_url = await receiver.start()
        stack.push_async_callback(receiver.stop)
        settings = load_config(_config(tmp_path, sim_url, hook_url, tokens or []), env={})
        store = SQLiteStore(tmp_path / "watcher.db")
        running = InProcessDaemon(settings, store=store)
        daemon = running.daemon
        try:
            await running.start(15)  # surfaces a start-up error
            jobs = await _populate(sim, receiver, store, daemon, hostile)
            dead = await store.list_deliveries(state="dead")
            yield Scene(
                base_url=f"http://{settings.api.listen}",
                store=store,
                sim=sim,
                receiver=receiver,
                daemon=daemon,
                jobs=jobs,
                dead_id=dead[0].id,
            )
        finally:
            code = await running.stop(15) if running.task is not None else 0
        assert code == 0


async def _populate(
    sim: Simulator, receiver: Receiver, store: SQLiteStore, daemon: Daemon, hostile: bool
) -> dict[str, str]:
    assert daemon.state is not None
    state = daemon.state

    async def watch(job_id: str, **labels: str) -> None:
        reg = Registration(job_id, "acme", Source.API, labels=labels)
        await store.register([reg], state.clock.now())
        state.wake_scheduler()

    # First the failed job, whose only delivery the receiver refuses with 410 Gone: dead at once.
    error = HOSTILE_ERROR if hostile else "row 1432: invalid e-mail address"
    failed = sim.add_job(status="failed", name="customer.import", error=error).id
    receiver.fail_next(1, status=410)
    await watch(failed, team="billing", note=HOSTILE_LABEL if hostile else "nightly import")

    async def dead_count(n: int) -> bool:
        return len(await store.list_deliveries(state="dead")) >= n

    await eventually(lambda: dead_count(1), 15, "the 410 delivery dead")
    jobs = {
        "failed": failed,
        "active": sim.add_job(status="active", name="report.export").id,
        "queued": sim.add_job(status="queued", name="invoice.render").id,
        "success": sim.add_job(status="active", name="customer.createBatch", script=[(0.3, "success")]).id,
        "missing": str(uuid.UUID(int=0x5EED, version=4)),  # never exists upstream
    }
    for role in ("active", "queued", "success", "missing"):
        await watch(jobs[role], team="ops" if role != "active" else "reports")
    await eventually(
        lambda: {d.type for d in receiver.deliveries} >= {"job.success", "job.missing"},
        what="job.success and job.missing delivered",
    )
    for role in ("active", "queued"):
        await eventually(functools.partial(sim.requests, jobs[role]), what=f"{role} job polled")

    async def seen() -> bool:
        counts = await store.watch_counts()
        return counts.get("queued") == 1 and counts.get("active") == 1

    await eventually(seen, 15, "active and queued jobs seen")
    return jobs


@contextlib.asynccontextmanager
async def chromium(profile: Path, executable: str) -> AsyncIterator[BrowserContext]:
    """Debian's Chromium, headless, with a fresh profile; no browser is downloaded."""
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            yield context
        finally:
            await context.close()


def find_chromium() -> str | None:
    """The path of Debian's chromium, None if it is not installed."""
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def chromium_path() -> str:
    """Debian's chromium; skip (or fail when WATCHER_TEST_REQUIRE_TOOLS=1) if it is not installed."""
    path = find_chromium()
    if path is None:
        reason = "chromium is not installed (apt-get install chromium); the status page browser test needs it"
        if os.environ.get("WATCHER_TEST_REQUIRE_TOOLS") == "1":
            pytest.fail(reason + " and WATCHER_TEST_REQUIRE_TOOLS=1")
        pytest.skip(reason)
    return path
