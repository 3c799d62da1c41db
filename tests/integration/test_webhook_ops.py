"""Operating webhooks through the real daemon (SPEC §15): `POST /v1/webhooks/{name}/test` and `watcher
webhooks test NAME` send a signed `webhook.test` event at once and answer the receiver's status;
`POST /v1/deliveries/retry` and `watcher deliveries retry --all` replay dead deliveries in bulk."""

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
from watcher.cli.client import client_main
from watcher.devtools.receiver import Receiver
from watcher.devtools.simulate import Simulator


@pytest.fixture
async def daemon(tmp_path: Path, sim: Simulator, receiver: Receiver) -> AsyncIterator[InProcessDaemon]:
    assert sim.url is not None and receiver.url is not None
    hooks = [
        {"name": "ops", "url": receiver.url, "secret": SECRET, "events": ["job.failed"]},
        {
            "name": "chat",
            "url": receiver.url,
            "format": "discord",
            "secret": SECRET,
            "events": ["job.failed"],
        },
    ]
    d = InProcessDaemon(config.settings(tmp_path, sim.url, port=free_port(), webhooks=hooks))
    await d.start()
    yield d
    assert await d.stop() == 0


async def post(base: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(base + path, json=body) as r:
        return r.status, await r.json(content_type=None)


async def test_a_test_event_goes_out_at_once_and_answers_the_receiver_s_status(
    daemon: InProcessDaemon, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    """200 with delivered true and the status; a receiver answering 503 is delivered false with 503 (no
    retry: it is a test); an unknown name is a 404 problem; nothing is stored as a delivery."""
    status, answer = await post(daemon.base, "/v1/webhooks/ops/test")
    assert status == 200, answer
    assert (answer["webhook"], answer["delivered"], answer["status_code"]) == ("ops", True, 200)
    [got] = receiver.deliveries
    assert got.webhook_id == answer["event_id"] and got.type == "webhook.test"  # signed: it verified
    assert got.body["data"]["job"]["id"]  # the sample job, so formats show what an alert looks like

    receiver.fail_next(1, 503)
    status, answer = await post(daemon.base, "/v1/webhooks/chat/test")
    assert status == 200
    assert (answer["delivered"], answer["status_code"], answer["detail"]) == (
        False,
        503,
        "HTTP 503 Service Unavailable",
    )
    assert sum(receiver.attempts.values()) == 2  # one attempt each, no retry

    status, problem = await post(daemon.base, "/v1/webhooks/nope/test")
    assert status == 404 and problem["detail"] == "no webhook 'nope'"
    async with aiohttp.ClientSession() as http, http.get(daemon.base + "/v1/deliveries") as r:
        assert (await r.json())["deliveries"] == []

    assert await _cli("webhooks", "test", "ops", "--url", daemon.base) == 0
    assert "test event" in capsys.readouterr().out
    receiver.set_status(500)
    assert await _cli("webhooks", "test", "ops", "--url", daemon.base) == 1
    assert "NOT delivered: HTTP 500" in capsys.readouterr().out


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(client_main, list(argv))


async def test_bulk_replay_of_dead_deliveries(
    daemon: InProcessDaemon, sim: Simulator, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deliveries made dead (410 Gone) come back in bulk: by webhook, by time range, all; bad fields are
    400 naming them, an unknown webhook 404."""
    receiver.set_status(410)
    for _ in range(3):
        sim.add_job(status="failed", error="boom")
    async with aiohttp.ClientSession() as http:

        async def dead() -> int | None:
            async with http.get(daemon.base + "/v1/deliveries?state=dead") as r:
                n = len((await r.json())["deliveries"])
            return n if n == 6 else None

        # The jobs are registered through the API so the daemon polls them.
        for job in list(sim.jobs):
            async with http.post(daemon.base + "/v1/watches", json={"job_id": job}) as r:
                assert r.status == 201
        await eventually(dead, 15, "six dead deliveries")
    receiver.set_status(None)

    assert await post(daemon.base, "/v1/deliveries/retry", {"until": "2000-01-01T00:00:00Z"}) == (
        200,
        {"retried": 0},
    )
    status, problem = await post(daemon.base, "/v1/deliveries/retry", {"since": "yesterday"})
    assert status == 400 and problem["errors"][0]["field"] == "since"
    status, problem = await post(daemon.base, "/v1/deliveries/retry", {"state": "pending"})
    assert status == 400 and problem["errors"][0]["field"] == "state"
    assert (await post(daemon.base, "/v1/deliveries/retry", {"webhook": "nope"}))[0] == 404

    assert await post(
        daemon.base, "/v1/deliveries/retry", {"webhook": "ops", "since": "2000-01-01T00:00:00Z"}
    ) == (
        200,
        {"retried": 3},
    )
    await receiver.wait_for(3, within_s=15)
    assert await _cli("deliveries", "retry", "--all", "--url", daemon.base) == 0
    assert "3 dead deliveries are pending again" in capsys.readouterr().out
    await receiver.wait_for(6, within_s=15)
    assert await _cli("deliveries", "retry", "--url", daemon.base) == 2  # neither an id nor --all
