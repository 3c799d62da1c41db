"""Fixtures shared by the integration tests: an open store of every kind, a simulated upstream, a verifying
receiver."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.certs import Pki, make_pki
from tests.support.pg_clock import FakeNowPostgresStore
from tests.support.postgres import pg_schema
from watcher.devtools.receiver import Receiver
from watcher.devtools.simulate import Simulator
from watcher.store.base import Store
from watcher.store.memory import MemoryStore
from watcher.store.postgres import PostgresStore
from watcher.store.sqlite import SQLiteStore

STORE_KINDS = ["memory", "sqlite", "postgres", "postgres-shared"]
# The signing secret of the `receiver` fixture, for the daemons the tests configure (a test value).
SECRET = "whsec_" + base64.b64encode(b"integration-test-secret").decode()


def make_store(kind: str, tmp_path: Path) -> Store:
    """A new, not yet opened store of `kind`."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "state" / "watcher.db")
    raise AssertionError(kind)


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open store of each kind; every test using it runs once per implementation."""
    if request.param.startswith("postgres"):
        # Its own schema, dropped afterwards. shared=False takes the contract's fake times as given; the
        # shared (production) mode reads the database's clock, which FakeNowPostgresStore sets to them.
        async with pg_schema("contract") as url:
            pg = (
                PostgresStore(url, shared=False) if request.param == "postgres" else FakeNowPostgresStore(url)
            )
            await pg.open()
            yield pg
            await pg.close()
        return
    s = make_store(request.param, tmp_path)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(workspace_slug="acme")
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver([SECRET])
    await r.start()
    yield r
    await r.stop()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with a server certificate for loopback and a client certificate (tests/support/certs.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))
