"""A job whose handling keeps failing is quarantined, not a crash loop (SPEC §16): the real `watcher run`,
`watcher simulate` and receiver, on SQLite and on PostgreSQL.

The poison is real: a trigger in the database refuses every poll result written for one job (a store error
that belongs to that row, as a value the database cannot take would be), while the failure count and the
claims of the same row still go through.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.e2e.conftest import DaemonProc, Receiver, Sim, write_config
from tests.support.eventually import eventually
from tests.support.ports import free_port
from tests.support.postgres import PG_URL, pg_schema

pytestmark = pytest.mark.slow

_SQLITE_POISON = """
CREATE TRIGGER poison BEFORE UPDATE OF status ON watches WHEN NEW.job_id = '{job}'
BEGIN SELECT RAISE(ABORT, 'poisoned row for the test'); END"""
_PG_POISON = """
CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'poisoned row for the test'; END $$;
CREATE TRIGGER poison BEFORE UPDATE OF status ON watches FOR EACH ROW WHEN (NEW.job_id = '{job}')
EXECUTE FUNCTION poison()"""


class Db:
    """The daemon's database, reached beside it: to poison one row and to cure it."""

    def __init__(self, url: str, schema: str | None, sqlite_path: Path | None) -> None:
        self.url = url
        self.schema = schema
        self.sqlite_path = sqlite_path

    async def run(self, sql: str) -> None:
        if self.sqlite_path is not None:
            with sqlite3.connect(self.sqlite_path, timeout=10) as conn:
                conn.executescript(sql)
            return
        conn = await asyncpg.connect(PG_URL, timeout=10)
        try:
            await conn.execute(f'SET search_path = "{self.schema}"')
            await conn.execute(sql)
        finally:
            await conn.close()

    async def poison(self, job: str) -> None:
        await self.run((_SQLITE_POISON if self.sqlite_path else _PG_POISON).format(job=job))

    async def cure(self) -> None:
        await self.run("DROP TRIGGER poison" + ("" if self.sqlite_path else " ON watches"))


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    if request.param == "sqlite":
        path = tmp_path / "state" / "watcher.db"
        yield Db(f"sqlite:///{path}", None, path)
        return
    async with pg_schema("quarantine") as url:
        yield Db(url, url.rsplit("schema=", 1)[1], None)


async def api(daemon: DaemonProc, method: str, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, daemon.api + path) as r:
        return r.status, await r.json() if r.content_type.endswith("json") else await r.text()


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def test_a_poisoned_job_is_quarantined_and_released(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any, db: Db
) -> None:
    """The poisoned job fails 3 times and is quarantined; the others are delivered; the daemon never exits;
    after a restart it stays quarantined; once cured and released it is polled and delivered again."""
    poisoned = await sim.create_job(status="active", name="customer.createBatch")
    others = [await sim.create_job(status="active", name="customer.createBatch") for _ in range(4)]
    port = free_port()
    config = write_config(tmp_path, sim, receiver, port, watchlist=False, store_url=db.url)
    daemon: DaemonProc = daemon_factory(config, port)
    daemon.start()
    await daemon.wait_ready()
    await db.poison(poisoned)
    # Register through the real CLI client, as an operator would.
    for job in [poisoned, *others]:
        cli = await watcher_cli("watches", "add", job, "--url", daemon.api)
        assert cli.returncode == 0, cli.stderr

    async def quarantined() -> list[dict[str, Any]]:
        _, page = await api(daemon, "GET", "/v1/watches?status=quarantined")
        return list(page["watches"])

    (q,) = await eventually(quarantined, 30, "the poisoned job quarantined")
    assert q["job_id"] == poisoned and q["state"] == "quarantined"
    assert q["failures"] == 3 and "poisoned row for the test" in q["last_failure"]
    assert q["quarantined_at"] is not None and q["next_poll_at"] is None
    events = daemon.log_events()
    failed = [e for e in events if e.get("event") == "watch.handling_failed" and e.get("job_id") == poisoned]
    assert len(failed) == 3 and all("Traceback" in str(e.get("exception", "")) for e in failed)
    assert [e for e in events if e.get("event") == "watch.quarantined" and e.get("job_id") == poisoned]

    # The others were saved all along: their failures reach the receiver.
    for job in others:
        await sim.set_status(job, "failed", error="boom")
    got = await receiver.wait_for(lambda d: len(d) >= len(others), timeout=30)
    assert {d["body"]["data"]["job"]["id"] for d in got} == set(others)

    async def gauge() -> bool:
        _, text = await api(daemon, "GET", "/metrics")
        return metric(text, "watcher_watches_quarantined") == 1.0

    await eventually(gauge, 10, "watcher_watches_quarantined == 1")
    # Never polled while quarantined: the simulator sees no new request for it while others are polled.
    before = len(await sim.requests(poisoned))
    staying = await sim.create_job(status="active", name="customer.createBatch")
    status, _ = await api(daemon, "GET", "/healthz")
    assert status == 200
    cli = await watcher_cli("watches", "add", staying, "--url", daemon.api)
    assert cli.returncode == 0, cli.stderr
    await eventually(lambda: _polled(sim, staying, 5), 20, "another job polled 5 times")
    assert len(await sim.requests(poisoned)) == before

    # A restart keeps the quarantine (no crash loop, no polling).
    assert daemon.stop() == 0
    daemon.start()
    await daemon.wait_ready()
    await eventually(lambda: _polled(sim, staying, 8), 20, "polling resumed after the restart")
    assert len(await sim.requests(poisoned)) == before
    assert [w["job_id"] for w in await quarantined()] == [poisoned]

    # Cured and released: polled again, and its failure is delivered.
    await db.cure()
    cli = await watcher_cli("watches", "release", poisoned, "--url", daemon.api)
    assert cli.returncode == 0, cli.stderr
    assert "released" in cli.stdout
    status, _ = await api(daemon, "POST", f"/v1/watches/{poisoned}/release")
    assert status == 409  # not quarantined any more
    await sim.set_status(poisoned, "failed", error="late")
    got = await receiver.wait_for(lambda d: poisoned in {x["body"]["data"]["job"]["id"] for x in d}, 30)
    assert daemon.alive()
    assert daemon.stop() == 0


async def watcher_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The `watcher` command line, run without blocking the test's event loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "watcher", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


async def _polled(sim: Sim, job: str, n: int) -> bool:
    return len(await sim.requests(job)) >= n
