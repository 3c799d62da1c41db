"""Grouped webhooks end to end (SPEC §15, `group_window_s`): `watcher simulate`, `watcher run` and the
independent receivers, each a process of its own on loopback.

A batch fails (800 jobs within a few seconds): a grouped `slack` webhook receives a handful of messages
whose counts, read from the messages' text, add up to 800, while a `standard` webhook in the same run gets
800 deliveries. And a daemon killed (SIGKILL) while a group is being sent and retried loses no member: after
a restart the group goes out again and every member is delivered. Both on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import WEBHOOK_SECRET, DaemonProc, Receiver, Sim, running_receiver, write_config
from tests.support.eventually import eventually
from tests.support.ports import free_port
from tests.support.postgres import pg_schema

pytestmark = pytest.mark.slow

JOBS = 800
WINDOW_S = 2.0
ERROR = "row 3: bad email"
TITLE = re.compile(r"^:rotating_light: \*(\d+) jobs? failed in acme\*$")
MORE = re.compile(r"^and (\d+) more: ")


def message_count(text: str) -> int:
    """How many jobs one grouped Slack message says failed, checked against its own lines: the title's
    count is the listed members plus the `and N more` ones."""
    title, *lines = text.split("\n")
    m = TITLE.match(title)
    assert m is not None, title
    count = int(m.group(1))
    listed = [line for line in lines if line.startswith("• ")]
    rest = [int(r.group(1)) for line in lines if (r := MORE.match(line))]
    assert len(listed) == min(count, 10), text
    assert all(ERROR in line for line in listed), text
    assert len(listed) + sum(rest) == count, text
    return count


def counted(messages: list[dict[str, Any]]) -> dict[str, int]:
    """Each distinct grouped message (by webhook-id) and the count it says."""
    return {d["id"]: message_count(d["body"]["text"]) for d in messages}


def chat_hook(url: str, **keys: Any) -> dict[str, Any]:
    return {
        "name": "chat",
        "url": url,
        "format": "slack",
        "secret": WEBHOOK_SECRET,  # signed, so the independent receiver verifies it
        "events": ["job.failed"],
        "group_window_s": WINDOW_S,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.3,
        "max_attempts": 1000,
        "timeout_s": 2.0,
        **keys,
    }


async def create_jobs(sim: Sim, specs: list[dict[str, Any]]) -> list[str]:
    ids: list[str] = []
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as s:

        async def one(spec: dict[str, Any]) -> None:
            async with sem, s.post(sim.root + "/_sim/jobs", json=spec) as r:
                assert r.status == 201
                ids.append((await r.json())["id"])

        await asyncio.gather(*(one(spec) for spec in specs))
    return ids


async def deliveries(api: str, webhook: str) -> list[dict[str, Any]]:
    """Every delivery of `webhook`, through the API's pages."""
    out: list[dict[str, Any]] = []
    before: int | None = None
    async with aiohttp.ClientSession() as s:
        while True:
            q = f"/v1/deliveries?webhook={webhook}&limit=500" + (f"&before={before}" if before else "")
            async with s.get(api + q) as r:
                assert r.status == 200
                page = (await r.json())["deliveries"]
            out += page
            if len(page) < 500:
                return out
            before = page[-1]["id"]


@pytest.fixture
def chat(tmp_path: Path) -> Any:
    with running_receiver(tmp_path / "chat.jsonl", WEBHOOK_SECRET) as r:
        yield r


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest) -> AsyncIterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    async with pg_schema("grouping") as url:
        yield url


async def test_a_failing_batch_is_a_handful_of_messages(
    tmp_path: Path, sim: Sim, receiver: Receiver, chat: Receiver, daemon_factory: Any, store_url: str | None
) -> None:
    """800 jobs fail within 3 s (while watched): the grouped slack webhook gets a handful of messages whose
    counts add up to 800; the standard webhook gets 800 deliveries, one per job."""
    started = time.monotonic()
    specs = [
        {
            "status": "active",
            "script": [{"after_s": 4.0 + 3.0 * i / JOBS, "status": "failed", "error": ERROR}],
        }
        for i in range(JOBS)
    ]
    jobs = await create_jobs(sim, specs)
    (tmp_path / "watchlist.txt").write_text("\n".join(jobs) + "\n")
    port = free_port()
    cfg = write_config(
        tmp_path,
        sim,
        receiver,
        port,
        polling={"initial_interval_s": 0.5, "multiplier": 2.0, "max_interval_s": 1.0},
        webhook={"events": ["job.failed"]},
        more_webhooks=[chat_hook(str(chat.url))],
        store_url=store_url,
    )
    daemon: DaemonProc = daemon_factory(cfg, port)
    daemon.start()
    await daemon.wait_ready()
    std = await receiver.wait_for(lambda got: len({d["id"] for d in got}) >= JOBS, timeout=45)
    messages = await chat.wait_for(lambda got: sum(counted(got).values()) >= JOBS, 30)
    assert daemon.stop() == 0
    elapsed = time.monotonic() - started

    # At least once: a message repeated (a reply lost to a timeout) has the same id and counts once.
    counts = list(counted(messages).values())
    assert sum(counts) == JOBS, counts
    assert 1 <= len(counts) <= 10, counts  # a handful: the failures span two or three windows
    assert {d["body"]["data"]["job"]["id"] for d in std} == set(jobs)
    assert len({d["id"] for d in std}) == JOBS  # one delivery per job, each its event's id
    assert all(d["type"] == "job.failed" for d in std)
    assert elapsed < 60, f"took {elapsed:.1f} s"


async def test_a_crash_mid_group_loses_no_member(
    tmp_path: Path, sim: Sim, receiver: Receiver, chat: Receiver, daemon_factory: Any, store_url: str | None
) -> None:
    """The chat receiver answers 503: a group of 60 is sent and retried over and over. SIGKILL the daemon
    meanwhile (a send in flight, or members waiting for their retry), let the receiver recover and
    restart: the group goes out again and every member is delivered (a duplicate would be allowed, a
    lost member is not)."""
    n = 60
    jobs = await create_jobs(sim, [{"status": "failed", "error": ERROR} for _ in range(n)])
    (tmp_path / "watchlist.txt").write_text("\n".join(jobs) + "\n")
    await chat.set_status(503)
    port = free_port()
    cfg = write_config(
        tmp_path,
        sim,
        receiver,
        port,
        webhook={"events": ["job.failed"]},
        more_webhooks=[chat_hook(str(chat.url), group_window_s=0.5)],
        store_url=store_url,
        daemon={"lease_s": 3.0},  # a PostgreSQL lease held by the killed daemon ends soon after
    )
    daemon: DaemonProc = daemon_factory(cfg, port)
    daemon.start()
    await daemon.wait_ready()

    async def retrying() -> bool:
        rows = await deliveries(daemon.api, "chat")
        return len(rows) == n and all(r["attempts"] >= 2 for r in rows)

    await eventually(retrying, 30, "the group of 60 retried")
    daemon.kill()
    assert chat.deliveries() == []  # nothing accepted before the crash
    await chat.set_status(None)
    daemon.start()
    await daemon.wait_ready()

    async def delivered() -> list[dict[str, Any]] | None:
        rows = await deliveries(daemon.api, "chat")
        return rows if len(rows) == n and all(r["state"] == "delivered" for r in rows) else None

    rows = await eventually(delivered, 30, "every member delivered")
    messages = chat.deliveries()
    assert sum(message_count(d["body"]["text"]) for d in messages) >= n
    assert len({r["attempts"] for r in rows}) == 1  # retried together: one attempt count
    assert {r["job_id"] for r in rows} == set(jobs)
    assert daemon.stop() == 0
