"""Reloading the configuration (SIGHUP) in the real daemon: `api.tokens`, `[[api.clients]]` and
`[[webhooks]]` change without a restart; a bad file keeps everything that runs, logged and counted; a key
that needs a restart is named in a warning and keeps its running value.

The daemon runs in this process and is asked to reload as its SIGHUP handler asks (`Daemon.reload`); the
file is rewritten as an operator would, and re-read with the same loader as at start-up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from tests.integration.conftest import SECRET
from tests.support import config
from tests.support.daemon import InProcessDaemon
from tests.support.eventually import eventually
from tests.support.ports import free_port
from watcher.config import load_config
from watcher.devtools.receiver import Receiver
from watcher.devtools.simulate import Simulator

# A second signing secret, for the rotation and for the second receiver (test values).
OTHER_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN_A, TOKEN_B = "token-a-0123456789", "token-b-0123456789"
TOKEN_CI, TOKEN_R = "token-ci-0123456789", "token-reader-0123456789"
# Failures never open the breaker here: the tests look at attempts, not at the breaker.
NO_BREAKER = {"breaker_failures": 1000}

Write = Callable[..., Path]


@pytest.fixture
def write(tmp_path: Path, sim: Simulator) -> Write:
    """Write the daemon's configuration file: always the same port and store, these tokens and webhooks."""
    port = free_port()
    assert sim.url is not None

    def write_file(
        *,
        tokens: Sequence[str] = (TOKEN_A,),
        clients: Sequence[Mapping[str, Any]] = (),
        webhooks: Sequence[Mapping[str, Any]] = (),
        sections: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Path:
        api: dict[str, Any] = {"tokens": list(tokens)}
        if clients:
            api["clients"] = [dict(c) for c in clients]
        assert sim.url is not None
        return config.write_config(
            tmp_path,
            sim.url,
            port=port,
            webhooks=[{**NO_BREAKER, **h} for h in webhooks],
            sections={"api": api, **(sections or {})},
        )

    return write_file


@pytest.fixture
async def start(write: Write) -> AsyncIterator[Callable[..., Awaitable[InProcessDaemon]]]:
    """Start the daemon on a file written by `write(**kw)`; it re-reads that file when asked to reload."""
    running: list[InProcessDaemon] = []

    async def start_daemon(**kw: Any) -> InProcessDaemon:
        path = write(**kw)
        d = InProcessDaemon(load_config(path, env={}), load_config=lambda: load_config(path, env={}))
        await d.start()
        running.append(d)
        return d

    yield start_daemon
    for d in running:
        assert await d.stop() == 0


async def call(
    d: InProcessDaemon, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, d.base + path, json=body, headers=headers) as r,
    ):
        return r.status, await r.json(content_type=None)


def sample(d: InProcessDaemon, name: str, **labels: str) -> float:
    value = d.daemon.metrics.registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


async def watch(d: InProcessDaemon, job_id: str, token: str = TOKEN_A) -> None:
    status, body = await call(d, "POST", "/v1/watches", token, {"job_id": job_id})
    assert status in (200, 201), body


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def test_tokens_and_clients_change_at_once(start: Callable[..., Any], write: Write) -> None:
    """A new token works at once, a removed one gets 401 at once, a new client has its scopes; a request
    authenticated before the reload finishes; the reload is counted and timed."""
    ci = {"name": "ci", "token": TOKEN_CI, "rate_limit_per_s": 1000.0}
    d = await start(clients=[ci])
    assert (await call(d, "GET", "/v1/watches", TOKEN_A))[0] == 200
    assert (await call(d, "GET", "/v1/watches", TOKEN_B))[0] == 401
    loaded_at = sample(d, "watcher_config_last_reload_success_timestamp_seconds")

    # A registration in flight: authenticated as `ci` (its rate limit spent one request), body not sent.
    state = d.daemon.state
    assert state is not None
    gate = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b'{"job_id": '
        await gate.wait()
        yield b'"5135bfe3-b2c7-41f3-a44f-f4b58e7384df"}'

    async def in_flight() -> int:
        headers = {"Authorization": f"Bearer {TOKEN_CI}", "Content-Type": "application/json"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(d.base + "/v1/watches", data=body(), headers=headers) as r,
        ):
            return r.status

    task = asyncio.create_task(in_flight())
    authenticated = state.clients.find(TOKEN_CI)
    assert authenticated is not None
    # The rate limit's bucket is first touched when the request is authenticated (before its body is read).
    await eventually(lambda: authenticated._at is not None, 10, "the in-flight request authenticated")

    reader = {"name": "reader", "token": TOKEN_R, "scopes": ["watches:read"]}
    write(tokens=[TOKEN_B], clients=[reader])
    with capture_logs() as logs:
        d.daemon.reload()
    gate.set()
    assert await task in (200, 201)  # it began before the reload: it finishes as it began

    assert (await call(d, "GET", "/v1/watches", TOKEN_A))[0] == 401
    assert (await call(d, "GET", "/v1/watches", TOKEN_CI))[0] == 401
    assert (await call(d, "GET", "/v1/watches", TOKEN_B))[0] == 200
    assert (await call(d, "GET", "/v1/watches", TOKEN_R))[0] == 200
    status, problem = await call(d, "POST", "/v1/watches", TOKEN_R, {"job_id": "x"})
    assert status == 403 and "watches:write" in problem["detail"]
    [done] = events(logs, "config.reloaded")
    assert done["api_tokens"] == 1 and done["api_clients"] == ["reader"]
    assert TOKEN_B not in repr(logs) and TOKEN_R not in repr(logs)
    assert sample(d, "watcher_config_reloads_total", result="ok") == 1
    assert sample(d, "watcher_config_reloads_total", result="failed") == 0
    assert sample(d, "watcher_config_last_reload_success_timestamp_seconds") >= loaded_at


async def test_an_added_webhook_gets_the_next_failure(
    start: Callable[..., Any], write: Write, sim: Simulator, receiver: Receiver
) -> None:
    """A webhook added by a reload gets the next event, signed with its own secret; GET /v1/webhooks and
    registrations know it."""
    other = Receiver([OTHER_SECRET])
    await other.start()
    try:
        ops = {"name": "ops", "url": receiver.url, "secret": SECRET, "events": ["job.failed"]}
        d = await start(webhooks=[ops])
        extra = {"name": "extra", "url": other.url, "secret": OTHER_SECRET, "events": ["job.failed"]}
        write(webhooks=[ops, extra])
        assert (await call(d, "POST", "/v1/watches", TOKEN_A, {"job_id": _job(sim), "webhooks": ["extra"]}))[
            0
        ] == 400  # not configured yet
        d.daemon.reload()
        status, document = await call(d, "GET", "/openapi.json", None)
        assert status == 200 and '"extra"' in json.dumps(document)  # rebuilt: it names the webhooks
        status, listed = await call(d, "GET", "/v1/webhooks", TOKEN_A)
        assert status == 200 and {w["name"] for w in listed["items"]} >= {"ops", "extra"}

        job = _job(sim, status="failed")
        await watch(d, job)
        [got] = await other.wait_for(1, 15)
        assert got.type == "job.failed" and got.body["data"]["job"]["id"] == job  # verified: OTHER_SECRET
        await receiver.wait_for(1, 15)
        assert other.rejected == 0
        await eventually(
            lambda: sample(d, "watcher_webhook_deliveries_total", webhook="extra", outcome="success") == 1,
            10,
            "the new webhook's series counted",
        )
    finally:
        await other.stop()


async def test_a_changed_secret_signs_the_next_attempt(
    start: Callable[..., Any], write: Write, sim: Simulator, receiver: Receiver
) -> None:
    """The receiver has rotated to a new secret and rejects the old signature (401, retried); after the
    reload the next attempt of the same delivery (same webhook-id) is signed with the new secret."""
    ops = {"name": "ops", "url": receiver.url, "secret": SECRET, "events": ["job.failed"]}
    d = await start(webhooks=[ops])
    receiver.secrets = (OTHER_SECRET,)
    await watch(d, _job(sim, status="failed"))
    await eventually(lambda: receiver.rejected >= 2, 15, "attempts signed with the old secret rejected")
    write(webhooks=[{**ops, "secret": OTHER_SECRET}])
    d.daemon.reload()
    [got] = await receiver.wait_for(1, 15)
    assert got.type == "job.failed"

    async def delivered() -> dict[str, Any] | None:
        status, body = await call(d, "GET", "/v1/deliveries?webhook=ops", TOKEN_A)
        assert status == 200
        [delivery] = body["deliveries"]
        return delivery if delivery["state"] == "delivered" else None

    delivery = await eventually(delivered, 10, "the delivery recorded as delivered")
    assert delivery["event_id"] == got.webhook_id  # the same delivery, retried, not a new one
    assert delivery["attempts"] >= 3  # two or more rejected with the old secret, then this one


async def test_a_removed_webhook_s_deliveries_are_kept_dead_for_replay(
    start: Callable[..., Any], write: Write, sim: Simulator, receiver: Receiver
) -> None:
    """Pending deliveries of a removed webhook become dead (`webhook not configured`) instead of going out;
    once the webhook is back, replay sends them: nothing is lost."""
    down = Receiver([OTHER_SECRET])
    await down.start()
    try:
        down.set_status(503)
        ops = {"name": "ops", "url": receiver.url, "secret": SECRET, "events": ["job.failed"]}
        old = {"name": "old", "url": down.url, "secret": OTHER_SECRET, "events": ["job.failed"]}
        d = await start(webhooks=[ops, old])
        await watch(d, _job(sim, status="failed"))
        await eventually(lambda: sum(down.attempts.values()) >= 1, 15, "an attempt to the failing webhook")
        write(webhooks=[ops])
        with capture_logs() as logs:
            d.daemon.reload()
        assert events(logs, "config.reloaded")[0]["webhooks_removed"] == ["old"]

        async def dead() -> list[Any] | None:
            status, body = await call(d, "GET", "/v1/deliveries?state=dead&webhook=old", TOKEN_A)
            assert status == 200
            return body["deliveries"] or None

        [gone] = await eventually(dead, 15, "the removed webhook's delivery dead")
        assert gone["last_error"] == "webhook not configured"
        await receiver.wait_for(1, 15)  # the other webhook got its delivery all the same

        down.set_status(None)
        write(webhooks=[ops, old])
        d.daemon.reload()
        status, body = await call(d, "POST", "/v1/deliveries/retry", TOKEN_A, {"webhook": "old"})
        assert (status, body) == (200, {"retried": 1})
        [got] = await down.wait_for(1, 15)
        assert got.type == "job.failed"
    finally:
        await down.stop()


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[api]\ntokens = ["token-new-0123456789"\n', "invalid TOML"),
        (None, "webhooks[0].urll: unknown key"),
        (None, "daemon.lease_s: must be longer than every upstream, webhook and callbacks timeout_s"),
    ],
    ids=["bad-toml", "unknown-key", "cross-check-with-running-values"],
)
async def test_a_bad_file_keeps_the_running_configuration(
    start: Callable[..., Any],
    write: Write,
    receiver: Receiver,
    text: str | None,
    key: str,
) -> None:
    """Nothing of a bad file applies: the old token still works and the new one does not; the failure is
    logged once with the problems naming the key (no value, no traceback) and counted; a good file later
    applies and clears `watcher_config_last_reload_successful`."""
    ops = {"name": "ops", "url": receiver.url, "secret": SECRET}
    d = await start(webhooks=[ops])
    new = "token-new-0123456789"
    path = write(tokens=[new], webhooks=[ops])
    if text is not None:
        path.write_text(text)
    elif "urll" in key:
        path.write_text(path.read_text() + 'urll = "http://127.0.0.1:9/typo"\n')
    else:  # valid on its own (its own lease_s is long enough), not with the running lease_s of 60 s
        write(tokens=[new], webhooks=[{**ops, "timeout_s": 120.0}], sections={"daemon": {"lease_s": 300.0}})
    with capture_logs() as logs:
        d.daemon.reload()
    [failed] = events(logs, "config.reload_failed")
    assert any(key in p for p in failed["problems"]), failed
    assert "exc_info" not in failed and new not in repr(logs)
    assert events(logs, "config.reloaded") == []
    assert (await call(d, "GET", "/v1/watches", TOKEN_A))[0] == 200
    assert (await call(d, "GET", "/v1/watches", new))[0] == 401
    assert sample(d, "watcher_config_reloads_total", result="failed") == 1
    assert sample(d, "watcher_config_last_reload_successful") == 0
    assert d.running

    write(tokens=[new], webhooks=[ops])
    d.daemon.reload()
    assert (await call(d, "GET", "/v1/watches", new))[0] == 200
    assert sample(d, "watcher_config_reloads_total", result="ok") == 1
    assert sample(d, "watcher_config_last_reload_successful") == 1


async def test_keys_that_need_a_restart_are_named_and_kept(
    start: Callable[..., Any], write: Write, tmp_path: Path
) -> None:
    """Changed restart-only keys each get a warning naming the key (never the value) and keep their
    running value, while the reloadable keys of the same file apply."""
    d = await start()
    listen = d.daemon.settings.api.listen
    write(
        tokens=[TOKEN_B],
        sections={
            "polling": {"initial_interval_s": 0.1},
            "upstream": {"token": "a-new-upstream-token-0123"},
            "store": {"url": f"sqlite:///{tmp_path / 'other.db'}"},
            "api": {"tokens": [TOKEN_B], "listen": "127.0.0.1:1", "max_body_bytes": 4096},
        },
    )
    with capture_logs() as logs:
        d.daemon.reload()
    keys = {e["key"] for e in events(logs, "config.restart_required")}
    assert keys == {
        "polling.initial_interval_s",
        "upstream.token",
        "store.url",
        "api.listen",
        "api.max_body_bytes",
    }
    assert "a-new-upstream-token-0123" not in repr(logs) and "other.db" not in repr(logs)
    assert (await call(d, "GET", "/v1/watches", TOKEN_B))[0] == 200  # the reloadable part applied
    s = d.daemon.settings
    assert (s.api.listen, s.polling.initial_interval_s, s.api.max_body_bytes) == (listen, 0.05, 1_048_576)
    assert s.store.url is not None and "other.db" not in s.store.url


async def test_an_api_beyond_loopback_keeps_a_token(start: Callable[..., Any], write: Write) -> None:
    """Removing every token of an API that listens beyond loopback is refused, as at start-up."""
    d = await start(sections={"api": {"tokens": [TOKEN_A], "listen": f"0.0.0.0:{free_port()}"}})
    d.base = f"http://127.0.0.1:{d.daemon.settings.api.port}"
    write(tokens=[], sections={"api": {"tokens": [], "listen": d.daemon.settings.api.listen}})
    with capture_logs() as logs:
        assert d.daemon.reload_config() is False
    [failed] = events(logs, "config.reload_failed")
    assert failed["problems"][0].startswith("api.tokens: the API listens on 0.0.0.0")
    assert (await call(d, "GET", "/v1/watches", None))[0] == 401


def _job(sim: Simulator, status: str = "active") -> str:
    job = sim.add_job(status=status, error="boom" if status == "failed" else None)
    return str(job.id)


async def test_a_sighup_before_the_daemon_runs_is_applied_once_it_does(write: Write) -> None:
    """A reload asked for during start-up (before the API's state exists) waits, then applies."""
    path = write()
    d = InProcessDaemon(load_config(path, env={}), load_config=lambda: load_config(path, env={}))
    write(tokens=[TOKEN_B])
    with capture_logs() as logs:
        d.daemon.reload()
    [deferred] = events(logs, "config.reload_requested")
    assert deferred["deferred"] == "until the daemon has started"
    await d.start()
    try:
        assert (await call(d, "GET", "/v1/watches", TOKEN_B))[0] == 200
        assert (await call(d, "GET", "/v1/watches", TOKEN_A))[0] == 401
        assert sample(d, "watcher_config_reloads_total", result="ok") == 1
    finally:
        assert await d.stop() == 0


async def test_a_storm_of_sighups_costs_a_few_reloads_and_applies_the_last_file(
    start: Callable[..., Any], write: Write
) -> None:
    """200 SIGHUPs in a burst: the first few reload at once, the rest are paced into a few reloads; the
    file as it was at the last signal applies; the daemon keeps answering meanwhile."""
    d = await start()
    new = "token-after-the-storm-0123"
    with capture_logs() as logs:
        for i in range(200):
            if i == 199:
                write(tokens=[TOKEN_A, new])
            d.daemon.reload()
        assert (await call(d, "GET", "/v1/watches", TOKEN_A))[0] == 200

        async def applied() -> bool:
            return (await call(d, "GET", "/v1/watches", new))[0] == 200

        await eventually(applied, 15, "the last file applied")
    reloads = len(events(logs, "config.reloaded"))
    assert 3 <= reloads < 20, reloads
