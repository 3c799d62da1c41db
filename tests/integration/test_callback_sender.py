"""The webhook sender over the guarded connector: blocked addresses are dead at once, a 2xx whose body
stalls is delivered (issue 14), redirects are not followed. Real aiohttp servers on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from watcher.config.callbacks import CallbacksConfig
from watcher.delivery.guard import AddressGuard, guarded_connector
from watcher.delivery.target import WebhookTarget
from watcher.delivery.webhook import DRAIN_TIMEOUT_S, WebhookSender
from watcher.models import DeadReason, Delivery, DeliveryOutcome, DeliveryState, Event

SECRET = "whsec_Y2FsbGJhY2stc2VuZGVyLXRlc3Qta2V5"


def delivery() -> Delivery:
    """A pending delivery of one failed event."""
    event = Event("evt_1", "job-1", "acme", "job.failed", time.time(), {"type": "job.failed", "data": {}})
    return Delivery(1, event, "callback", DeliveryState.PENDING, 0, 0.0, 0.0)


class Receiver:
    """A loopback server: `/ok` answers 200, `/stall` sends a 200 and its headers and then never the body,
    `/redirect` answers 307 to `/ok`."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> Receiver:
        """Listen on 127.0.0.1, a free port."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append(request.path)
        await request.read()
        if request.path == "/redirect":
            raise web.HTTPTemporaryRedirect("/ok")
        if request.path == "/stall":
            resp = web.StreamResponse(status=200, headers={"Content-Length": "100000"})
            await resp.prepare(request)
            await resp.write(b"x" * 10)
            await self.release.wait()  # the rest of the body never comes while the test runs
            return resp
        return web.Response(text="ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A started receiver, stopped after the test."""
    r = await Receiver().start()
    yield r
    r.release.set()
    assert r.runner is not None
    await r.runner.cleanup()


async def send(url: str, allow: list[str], timeout_s: float = 10.0) -> tuple[object, ...]:
    """Send one delivery to `url` through a guarded session allowing `allow`; the result's main fields."""
    guard = AddressGuard.from_config(allow, require_https=False)
    target = WebhookTarget("callback", url, (SECRET,), frozenset(), timeout_s=timeout_s)
    async with aiohttp.ClientSession(connector=guarded_connector(guard), trust_env=False) as session:
        result = await WebhookSender(session).send(target, delivery())
    return result.kind, result.dead_reason, result.status_code, result.detail, result.duration_s


async def test_blocked_address_is_dead_with_its_reason(receiver: Receiver) -> None:
    """A loopback callback without the allowance is dead at once (`blocked_address`); nothing arrives."""
    for host in ("127.0.0.1", "localhost", "0x7f.1", "[::ffff:127.0.0.1]", "0.0.0.0"):
        kind, reason, status, detail, _ = await send(f"http://{host}:{receiver.port}/ok?k=s3cr3t", [])
        assert (kind, reason, status) == (DeliveryOutcome.DEAD, DeadReason.BLOCKED_ADDRESS, None), host
        assert str(detail).startswith("blocked address: ")
        assert "s3cr3t" not in str(detail) and "/ok" not in str(detail)
    assert receiver.hits == []


async def test_allowed_network_is_delivered(receiver: Receiver) -> None:
    """The same callback inside `allow_networks` is delivered."""
    kind, *_ = await send(f"http://127.0.0.1:{receiver.port}/ok", ["127.0.0.0/8"])
    assert kind is DeliveryOutcome.SUCCESS
    assert receiver.hits == ["/ok"]


async def test_redirect_is_not_followed(receiver: Receiver) -> None:
    """A 307 is a failed attempt; its target gets nothing."""
    kind, _, status, detail, _ = await send(f"http://127.0.0.1:{receiver.port}/redirect", ["127.0.0.0/8"])
    assert (kind, status) == (DeliveryOutcome.RETRY, 307)
    assert "redirect not followed" in str(detail)
    assert receiver.hits == ["/redirect"]


async def test_a_2xx_whose_body_stalls_is_delivered(receiver: Receiver) -> None:
    """Headers of a 200 decide: the stalled body is dropped after the drain timeout, not the attempt's."""
    kind, _, status, _, duration = await send(
        f"http://127.0.0.1:{receiver.port}/stall", ["127.0.0.0/8"], timeout_s=30.0
    )
    assert (kind, status) == (DeliveryOutcome.SUCCESS, 200)
    assert isinstance(duration, float)
    assert duration < DRAIN_TIMEOUT_S + 5.0  # far below the 30 s attempt timeout
    assert receiver.hits == ["/stall"]


def test_callbacks_config_defaults_and_checks() -> None:
    """Off by default, https required, nothing allowed; enabling needs a secret; networks are checked."""
    c = CallbacksConfig()
    assert (c.enabled, c.require_https, c.allow_networks) == (False, True, [])
    with pytest.raises(ValueError, match="secret"):
        CallbacksConfig(enabled=True)
    with pytest.raises(ValueError, match="CIDR"):
        CallbacksConfig.model_validate({"allow_networks": ["127.0.0.1/8"]})
    ok = CallbacksConfig.model_validate({"enabled": True, "secret": SECRET, "allow_networks": ["::1/128"]})
    assert ok.all_secrets() == [SECRET]
