"""Poison upstream bodies through the real thing (issue 12, SPEC §16): `watcher simulate` serves each poison,
`watcher run` polls it on SQLite and on PostgreSQL, the independent receiver checks every body with a strict
JSON parser. The daemon stays up, each poisoned job gets its event with its body sanitised (or counts an
invalid_response, for deep nesting), the other jobs of the batch are unaffected, and a restart on the same
store crashes nothing."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import DaemonProc, Receiver, Sim, write_config
from tests.support.eventually import eventually
from tests.support.ports import free_port
from tests.support.postgres import pg_schema

pytestmark = pytest.mark.slow

SANITISED = ("lone_surrogate", "nan", "huge_int")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    """None for the config's SQLite store, else a fresh PostgreSQL schema's URL."""
    if request.param == "sqlite":
        yield None
        return
    async with pg_schema("poison") as url:
        yield url


def config(tmp_path: Path, sim: Sim, receiver: Receiver, port: int, store_url: str | None, **kw: Any) -> Path:
    """The e2e config, on PostgreSQL when `store_url` is given."""
    return write_config(tmp_path, sim, receiver, port, store_url=store_url, **kw)


async def poison(sim: Sim, job_id: str, variant: str, count: int) -> None:
    """Make the next `count` answers for `job_id` the poison `variant`."""
    await sim.call(
        "POST", f"/_sim/jobs/{job_id}/faults", {"kind": "poison", "variant": variant, "count": count}
    )


async def metric(daemon: DaemonProc, name: str, **labels: str) -> float | None:
    """One sample of the daemon's /metrics, None while it is not exported."""
    async with aiohttp.ClientSession() as s, s.get(daemon.api + "/metrics") as r:
        text = await r.text()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{re.escape(name)}{{{re.escape(want)}}} (\S+)$", text, re.M)
    return None if match is None else float(match[1])


async def wait_metric(
    daemon: DaemonProc, name: str, expected: float, within_s: float = 15.0, **labels: str
) -> None:
    """Wait until the sample equals `expected`; fail with the last value after `within_s`."""

    async def equal() -> bool:
        return await metric(daemon, name, **labels) == expected

    try:
        await eventually(equal, within_s, f"{name}{labels} == {expected}")
    except AssertionError:
        value = await metric(daemon, name, **labels)
        raise AssertionError(f"{name}{labels} is {value}, expected {expected}") from None


async def receiver_stats(receiver: Receiver) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(receiver.root + "/_ctl/stats") as r:
        return dict(await r.json())


def assert_no_crash(daemon: DaemonProc) -> None:
    events = daemon.log_events()
    assert not [e for e in events if e.get("event") in ("daemon.loop_died", "daemon.crashed")], events[-5:]
    assert "Traceback" not in daemon.log_text()


async def test_poison_bodies_never_kill_the_daemon(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any, store_url: str | None
) -> None:
    """Every poison in one batch with clean jobs: sanitised events delivered, deep nesting counted as
    invalid_response then resolved, clean jobs delivered, strict JSON only, and a restart survives the
    watches that keep answering poison."""
    finished: dict[str, str] = {}  # job -> variant, jobs that fail behind their poison
    for variant in SANITISED:
        finished[await sim.create_job(status="failed", error="boom")] = variant
    deep = await sim.create_job(status="failed", error="deep")
    clean = [await sim.create_job(status="success") for _ in range(5)]
    # Still running and poisoned on every poll: their watches (and stored events) outlive the restart.
    running = {await sim.create_job(status="active"): variant for variant in SANITISED}
    for job, variant in {**finished, **running}.items():
        await poison(sim, job, variant, 100_000)
    await poison(sim, deep, "deep_nesting", 3)
    (tmp_path / "watchlist.txt").write_text("\n".join([*finished, deep, *clean, *running]) + "\n")
    port = free_port()
    daemon: DaemonProc = daemon_factory(config(tmp_path, sim, receiver, port, store_url), port)
    daemon.start()
    await daemon.wait_ready()

    want = {*finished, deep, *clean}
    got = await receiver.wait_for(lambda d: {x["body"]["data"]["job"]["id"] for x in d} >= want, timeout=60)
    by_job = {d["body"]["data"]["job"]["id"]: d for d in got}
    assert {by_job[j]["type"] for j in clean} == {"job.success"}
    assert by_job[deep]["type"] == "job.failed" and by_job[deep]["body"]["data"]["job"]["error"] == "deep"
    jobs = {variant: by_job[j]["body"]["data"]["job"] for j, variant in finished.items()}
    assert all(by_job[j]["type"] == "job.failed" for j in finished)
    assert jobs["lone_surrogate"]["error"] == "\ufffd oops"
    assert jobs["lone_surrogate"]["note\ufffd"] == "lone low surrogate in the key"
    assert [jobs["nan"][k] for k in ("progress", "eta_s", "floor", "big")] == [None] * 4
    assert jobs["huge_int"]["count"] == "9" * 5000
    assert (await receiver_stats(receiver))["not_strict"] == 0
    await wait_metric(daemon, "watcher_polls_total", 3, outcome="invalid_response")
    assert daemon.alive()
    assert_no_crash(daemon)

    # A restart on the same store: the poisoned watches are restored and polled again, still poisoned.
    assert daemon.stop() == 0
    polls_before = len(await sim.requests())
    daemon.start()
    await daemon.wait_ready()

    async def polled_again() -> bool:  # each poisoned watch about three times more
        return len(await sim.requests()) >= polls_before + 3 * len(running)

    await eventually(polled_again, 15, "the restored poisoned watches polled again")
    assert daemon.alive()
    await wait_metric(daemon, "watcher_watched_jobs", len(running), status="active")
    assert daemon.stop() == 0
    assert_no_crash(daemon)
    assert (await receiver_stats(receiver))["not_strict"] == 0
