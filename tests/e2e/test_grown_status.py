"""Grown statuses end to end (SPEC §2, issue 12 item 7): `watcher simulate` serves `cancelled`, `watcher run`
(SQLite and PostgreSQL) treats it as the upstream's word: a transition, `job.cancelled`, an end of the watch
only when `[upstream] terminal_statuses` lists it, metric labels `other`, never an invalid_response."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import DaemonProc, Receiver, Sim
from tests.e2e.test_poison import config, metric, store_url, wait_metric
from tests.support.eventually import eventually
from tests.support.ports import free_port

pytestmark = pytest.mark.slow
__all__ = ["store_url"]  # the fixture, shared with the poison tests


async def api(daemon: DaemonProc, path: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(daemon.api + path) as r:
        assert r.status == 200, (path, r.status, await r.text())
        return await r.json() if r.content_type == "application/json" else await r.text()


async def polls_of(sim: Sim, job: str) -> int:
    return len(await sim.requests(job))


async def test_a_terminal_grown_status_ends_the_watch(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any, store_url: str | None
) -> None:
    """With cancelled among terminal_statuses: job.cancelled is delivered (default filter), polling stops,
    the watch is listed as cancelled, counted as finished with status="other"."""
    job = await sim.create_job(status="active")
    other = await sim.create_job(status="active")
    (tmp_path / "watchlist.txt").write_text(f"{job}\n{other}\n")
    port = free_port()
    upstream = {"terminal_statuses": ["success", "failed", "cancelled"]}
    daemon: DaemonProc = daemon_factory(
        config(tmp_path, sim, receiver, port, store_url, upstream=upstream), port
    )
    daemon.start()
    await daemon.wait_ready()
    await eventually(lambda: _status_is(daemon, job, "active"))
    await sim.set_status(job, "cancelled")
    await sim.set_status(other, "success")
    got = await receiver.wait_for(lambda d: len(d) >= 2, timeout=20)
    types = {d["body"]["data"]["job"]["id"]: d["type"] for d in got}
    assert types == {job: "job.cancelled", other: "job.success"}
    cancelled = next(d for d in got if d["type"] == "job.cancelled")["body"]["data"]
    assert (cancelled["job"]["status"], cancelled["previous_status"]) == ("cancelled", "active")

    before = await polls_of(sim, job)
    # A live watch is polled as often as another live one: three polls of a new job, none of this one.
    live = await sim.create_job(status="active")
    (tmp_path / "watchlist.txt").write_text((tmp_path / "watchlist.txt").read_text() + f"{live}\n")
    await eventually(lambda: _more_polls(sim, live, 3), 20, "three polls of a live job")
    assert await polls_of(sim, job) == before
    page = await api(daemon, "/v1/watches?status=cancelled")
    assert [(w["job_id"], w["state"], w["final"]) for w in page["watches"]] == [
        (job, "cancelled", "cancelled")
    ]
    await wait_metric(daemon, "watcher_jobs_finished_total", 1, status="other")
    assert await metric(daemon, "watcher_transitions_total", status="other") == 1
    assert await metric(daemon, "watcher_polls_total", outcome="invalid_response") == 0
    html = await api(daemon, "/")
    # Its own card among the finished ones, counted, and a link that lists it.
    card = re.search(r'data-status="cancelled" href="[^"]*"><span class="n">(\d+)</span>', html)
    assert card is not None and card[1] == "1", html[:3000]
    assert daemon.stop() == 0


async def test_a_grown_status_is_a_transition_and_polling_goes_on(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any, store_url: str | None
) -> None:
    """Default terminal_statuses: CANCELLED is one transition (job.cancelled, not in the default filter, so
    not delivered), cancelled after it is none (compared lower-cased); polling goes on without errors, and
    the job's success is delivered with previous_status cancelled."""
    job = await sim.create_job(status="active")
    (tmp_path / "watchlist.txt").write_text(f"{job}\n")
    port = free_port()
    daemon: DaemonProc = daemon_factory(config(tmp_path, sim, receiver, port, store_url), port)
    daemon.start()
    await daemon.wait_ready()
    await eventually(lambda: _status_is(daemon, job, "active"))
    await sim.set_status(job, "CANCELLED")
    await eventually(lambda: _status_is(daemon, job, "cancelled"))
    await sim.set_status(job, "cancelled")
    seen = await polls_of(sim, job)
    await eventually(lambda: _more_polls(sim, job, seen + 5))  # well past the case-only change

    detail = await api(daemon, f"/v1/watches/{job}")
    assert [t["type"] for t in detail["transitions"]] == ["job.active", "job.cancelled"]
    assert (detail["state"], detail["final"], detail["last_error"]) == ("cancelled", None, None)
    assert detail["next_poll_at"] is not None
    assert receiver.deliveries() == []
    assert await metric(daemon, "watcher_polls_total", outcome="invalid_response") == 0
    assert await metric(daemon, "watcher_transitions_total", status="other") == 1
    await wait_metric(daemon, "watcher_watched_jobs", 1, status="other")

    await sim.set_status(job, "success")
    (got,) = await receiver.wait_for(lambda d: len(d) >= 1, timeout=20)
    assert (got["type"], got["body"]["data"]["previous_status"]) == ("job.success", "cancelled")
    assert daemon.stop() == 0
    grown = [e for e in daemon.log_events() if e.get("event") == "upstream.grown_status"]
    assert sorted(e["status"] for e in grown) == ["CANCELLED", "cancelled"]  # each value once
    assert all(e["event_type"] == "job.cancelled" for e in grown)


async def _status_is(daemon: DaemonProc, job: str, status: str) -> bool:
    async with aiohttp.ClientSession() as s, s.get(f"{daemon.api}/v1/watches/{job}") as r:
        # 404 until the watch-list file has been read.
        return r.status == 200 and (await r.json())["status"] == status


async def _more_polls(sim: Sim, job: str, n: int) -> bool:
    return await polls_of(sim, job) >= n
