"""API test fixtures: a real daemon in-process with the simulated upstream and a verifying receiver."""

from __future__ import annotations

import base64
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import config
from tests.support.daemon import InProcessDaemon
from tests.support.ports import free_port
from tests.support.postgres import pg_schema
from watcher.config import Settings
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


def write_settings(
    tmp_path: Path, sim_url: str, hook_url: str, port: int, token: str | None = None, api: str = ""
) -> Settings:
    """A fast test configuration with two webhooks (`ops`, `audit`) and two workspaces (`acme`, `other`).

    `api`: more of the `[api]` table as TOML text, keys and `[[api.clients]]` tables alike.
    """
    hooks = {"secret": SECRET, "max_attempts": 2}
    more = tomllib.loads(api)
    more |= more.pop("api", {})  # `[[api.clients]]` tables in the text parse as {"api": {"clients": …}}
    return config.settings(
        tmp_path,
        sim_url,
        port=port,
        webhooks=[
            {"name": "ops", "url": hook_url, **hooks},
            {"name": "audit", "url": f"{hook_url}audit", "events": ["job.failed"], **hooks},
        ],
        sections={
            "upstream.workspaces.other": {"token": "other-token", "api_key": "other-key"},
            "api": {"max_body_bytes": 65536, **({"tokens": [token]} if token else {}), **more},
        },
    )


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
        api: str = "",
    ) -> Running:
        sim = Simulator(workspace_slug="acme", workspaces={"other": ("other-token", "other-key")})
        sim_url = await sim.start()
        stack.append(sim.stop)
        receiver = Receiver([SECRET])
        hook_url = await receiver.start()
        stack.append(receiver.stop)
        listfile = tmp_path / "watchlist.txt"
        listfile.write_text("".join(f"{j}\n" for j in watchlist))
        settings = write_settings(tmp_path, sim_url, hook_url, free_port(), token, api)
        running = InProcessDaemon(settings, store=store)

        async def stop() -> None:
            if running.task is not None:
                assert await running.stop(15) == 0

        stack.append(stop)
        await running.start(15)
        daemon = running.daemon
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
