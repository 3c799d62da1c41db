"""API test fixtures: a real daemon in-process with the simulated upstream and a verifying receiver."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from tests.e2e.conftest import free_port
from tests.support.postgres import pg_schema
from watcher.config import Settings, load_config
from watcher.daemon import Daemon
from watcher.devtools.receiver import Receiver
from watcher.devtools.simulate import Simulator
from watcher.store import Store
from watcher.store.postgres import PostgresStore
from watcher.store.sqlite import SQLiteStore

SECRET = "whsec_" + base64.b64encode(b"api-test-webhook-secret").decode()
TOKEN = "api-test-token-0123456789"


@dataclass
class Running:
    """A running daemon and what it talks to."""

    daemon: Daemon
    settings: Settings
    sim: Simulator
    receiver: Receiver
    base: str
    http: aiohttp.ClientSession
    token: str | None
    watchlist: Path

    def auth(self) -> dict[str, str]:
        """The Authorization header, if the daemon has tokens."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        """One request with the token; returns the status and the JSON body (None if there is none)."""
        headers = {**self.auth(), **kw.pop("headers", {})}
        async with self.http.request(method, self.base + path, headers=headers, **kw) as r:
            text = await r.text()
            return r.status, (await r.json(content_type=None)) if text else None


def write_settings(tmp_path: Path, sim_url: str, hook_url: str, port: int, extra: str = "") -> Settings:
    """A fast test configuration with two webhooks (`ops`, `audit`) and two workspaces (`acme`, `other`)."""
    text = f"""
[upstream]
base_url = "{sim_url}"
token = "sim-token"
api_key = "sim-key"
workspace_slug = "acme"
[upstream.workspaces.other]
token = "other-token"
api_key = "other-key"
[polling]
initial_interval_s = 0.05
max_interval_s = 0.2
[api]
listen = "127.0.0.1:{port}"
max_body_bytes = 65536
{extra}
[store]
url = "sqlite:///{tmp_path / "w.db"}"
[watchlist]
path = "{tmp_path / "watchlist.txt"}"
reload_interval_s = 0.1
[daemon]
shutdown_grace_s = 3.0
[[webhooks]]
name = "ops"
url = "{hook_url}"
secret = "{SECRET}"
retry_initial_s = 0.05
retry_max_s = 0.2
max_attempts = 2
[[webhooks]]
name = "audit"
url = "{hook_url}audit"
secret = "{SECRET}"
events = ["job.failed"]
retry_initial_s = 0.05
retry_max_s = 0.2
max_attempts = 2
"""
    path = tmp_path / "w.toml"
    path.write_text(text)
    return load_config(path, env={})


async def wait_until(predicate: Callable[[], object], within_s: float = 15.0) -> None:
    """Poll `predicate` every 20 ms until it is true; fail after `within_s`."""
    async with asyncio.timeout(within_s):
        while not predicate():
            await asyncio.sleep(0.02)


async def wait_for(check: Callable[[], Awaitable[bool]], within_s: float = 15.0) -> None:
    """Await `check` every 50 ms until it is true; fail after `within_s`."""
    async with asyncio.timeout(within_s):
        while not await check():
            await asyncio.sleep(0.05)


StartDaemon = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_daemon(tmp_path: Path) -> AsyncIterator[StartDaemon]:
    """A factory: `await start_daemon(token=..., watchlist=[...])` runs a daemon until the test ends."""
    stack: list[Callable[[], Awaitable[object]]] = []

    async def start(
        *,
        token: str | None = None,
        watchlist: tuple[str, ...] = (),
        store: Store | None = None,
        sections: str = "",
    ) -> Running:
        sim = Simulator(workspace_slug="acme", workspaces={"other": ("other-token", "other-key")})
        sim_url = await sim.start()
        stack.append(sim.stop)
        receiver = Receiver([SECRET])
        hook_url = await receiver.start()
        stack.append(receiver.stop)
        listfile = tmp_path / "watchlist.txt"
        listfile.write_text("".join(f"{j}\n" for j in watchlist))
        extra = (f'tokens = ["{token}"]' if token else "") + f"\n{sections}"  # more tables after [api]
        settings = write_settings(tmp_path, sim_url, hook_url, free_port(), extra)
        daemon = Daemon(settings, handle_signals=False, registry=CollectorRegistry(), store=store)
        run = asyncio.create_task(daemon.run())

        async def stop() -> None:
            daemon.request_stop()
            assert await asyncio.wait_for(run, 15) == 0

        stack.append(stop)
        await wait_until(lambda: run.done() or (daemon.state is not None and daemon.state.ready))
        if run.done():
            await run  # raises what stopped it
        http = aiohttp.ClientSession()
        stack.append(http.close)
        base = f"http://{settings.api.listen}"
        return Running(daemon, settings, sim, receiver, base, http, token, listfile)

    yield start
    for close in reversed(stack):
        await close()


@dataclass
class Backend:
    """A real store for a daemon to open: its kind, the (unopened) store, and where its data lives."""

    kind: str
    store: Store
    url: str  # a SQLite file path or a PostgreSQL URL with its test schema


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each real store in turn; the PostgreSQL one in a fresh schema, dropped afterwards."""
    if request.param == "postgres":
        async with pg_schema("api") as url:
            yield Backend("postgres", PostgresStore(url), url)
        return
    path = tmp_path / "backend.db"
    yield Backend("sqlite", SQLiteStore(path), str(path))
