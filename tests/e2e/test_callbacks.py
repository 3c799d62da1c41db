"""Per-watch callbacks as a user runs them (SPEC §13): `watcher run` with `[callbacks]` against
`watcher simulate` and an independent Standard Webhooks receiver, all subprocesses on loopback.

The callback receiver verifies with the `[callbacks]` secret (not the webhooks' one): only a correctly signed
delivery is recorded. Loopback is reachable only because `allow_networks` says so; without it the same
registration is refused.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import (
    DaemonProc,
    Receiver,
    Sim,
    running_receiver,
    write_config,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

CB_SECRET = "whsec_" + base64.b64encode(b"e2e-callback-signing-key!").decode()
HEADER = "Bearer e2e-cb-h3ader"


@pytest.fixture
def cb_receiver(tmp_path: Path) -> Iterator[Receiver]:
    """The independent receiver, verifying with the callbacks' secret."""
    with running_receiver(tmp_path / "callbacks.jsonl", CB_SECRET) as r:
        yield r


def with_callbacks(config: Path, allow: list[str]) -> Path:
    """Add a `[callbacks]` table: enabled, plain http allowed (loopback only exists over http here)."""
    networks = ", ".join(f'"{n}"' for n in allow)
    config.write_text(
        config.read_text()
        + f'\n[callbacks]\nenabled = true\nsecret = "{CB_SECRET}"\nrequire_https = false\n'
        + f"allow_networks = [{networks}]\nretry_initial_s = 0.05\nretry_max_s = 0.5\n"
    )
    return config


async def register(api: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST /v1/watches; the status and JSON answer."""
    async with aiohttp.ClientSession() as s, s.post(api + "/v1/watches", json=body) as r:
        return r.status, await r.json(content_type=None)


async def test_loopback_callback_gets_signed_failure_only_when_allowed(
    tmp_path: Path, sim: Sim, receiver: Receiver, cb_receiver: Receiver, daemon_factory: Any
) -> None:
    """With 127.0.0.0/8 allowed the callback receives a correctly signed `job.failed` (with its header
    value kept out of answers and logs); without the allowance the same registration is a 400."""
    job = await sim.create_job(status="active", name="customer.createBatch")
    body = {
        "job_id": job,
        "callback": {"url": cb_receiver.url, "events": ["job.failed"], "headers": {"Authorization": HEADER}},
    }

    port = free_port()
    allowed = with_callbacks(write_config(tmp_path, sim, receiver, port, watchlist=False), ["127.0.0.0/8"])
    daemon: DaemonProc = daemon_factory(allowed, port)
    daemon.start()
    await daemon.wait_ready()
    status, answer = await register(daemon.api, body)
    assert status == 201, answer
    assert answer["callback"]["headers"] == {"Authorization": "********"}
    await sim.set_status(job, "failed", error="quota exceeded")
    got = await cb_receiver.wait_for(lambda d: len(d) >= 1, timeout=20)
    assert [(d["type"], d["body"]["data"]["job"]["id"]) for d in got] == [("job.failed", job)]
    assert got[0]["body"]["data"]["job"]["error"] == "quota exceeded"
    webhook = await receiver.wait_for(lambda d: len(d) >= 1, timeout=20)
    assert webhook[0]["id"] == got[0]["id"]  # one event, one webhook-id, for the webhook and the callback
    assert daemon.stop() == 0
    assert "e2e-cb-h3ader" not in daemon.log_text()

    other = tmp_path / "refusing"
    other.mkdir()
    port = free_port()
    refusing = with_callbacks(write_config(other, sim, receiver, port, watchlist=False), [])
    strict: DaemonProc = daemon_factory(refusing, port)
    strict.start()
    await strict.wait_ready()
    status, problem = await register(strict.api, body)
    assert status == 400, problem
    assert [e["field"] for e in problem["errors"]] == ["callback.url"]
    assert "loopback" in problem["errors"][0]["message"]
    assert strict.stop() == 0
