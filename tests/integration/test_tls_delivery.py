"""TLS on the way out, with real certificates (tests/support/certs.py) and the real daemon in-process: the
simulated upstream behind HTTPS, webhook receivers behind HTTPS and behind mTLS, on loopback.

Polls also go through the proxy the environment names, TLS running end to end inside its tunnel.

A receiver whose certificate the webhook does not trust, or that wants a client certificate the webhook does
not present, gets nothing; each such attempt is a failed attempt (`outcome="retry"`, a TLS `last_error`),
and the daemon goes on delivering to the others.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import SECRET
from tests.support import config
from tests.support.certs import Pki
from tests.support.daemon import InProcessDaemon
from tests.support.eventually import eventually
from tests.support.http_proxy import ForwardProxy
from tests.support.ports import free_port
from tests.support.standard_webhooks import TestReceiver
from watcher.devtools.simulate import Simulator


@pytest.fixture
async def tls_sim(pki: Pki) -> AsyncIterator[Simulator]:
    """The simulated upstream over HTTPS with the test CA's server certificate, requiring a client
    certificate the CA signed (mTLS)."""
    s = Simulator(workspace_slug="acme")
    await s.start(ssl_context=pki.server_context(require_client_cert=True))
    yield s
    await s.stop()


@pytest.fixture
async def receivers(pki: Pki) -> AsyncIterator[dict[str, TestReceiver]]:
    """Four verifying receivers: two behind HTTPS, two behind HTTPS that requires a client certificate."""
    made = {name: TestReceiver([SECRET]) for name in ("trusted", "untrusted", "mtls", "no_cert")}
    for name, r in made.items():
        await r.start(ssl_context=pki.server_context(require_client_cert=name in ("mtls", "no_cert")))
    yield made
    for r in made.values():
        await r.stop()


def delivered_types(receiver: TestReceiver) -> list[Any]:
    return [d.type for d in receiver.deliveries]


async def deliveries(base: str, webhook: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/v1/deliveries?webhook={webhook}") as r:
        assert r.status == 200
        return list((await r.json())["deliveries"])


async def test_https_upstream_and_webhooks_with_ca_file_and_client_certificates(
    tmp_path: Path, pki: Pki, tls_sim: Simulator, receivers: dict[str, TestReceiver]
) -> None:
    """With `ca_file` and a client certificate the upstream is polled (it requires both), with `ca_file`
    the HTTPS receiver gets a signed event; with a client
    certificate the mTLS receiver does too. Without `ca_file`, or without the certificate, every attempt
    fails as a retryable TLS failure, the receiver sees nothing, and the daemon keeps running."""
    ca = {"ca_file": pki.ca}
    cert = {"client_cert_file": pki.client_cert, "client_key_file": pki.client_key}
    hooks: list[dict[str, Any]] = [
        {"name": "trusted", "url": receivers["trusted"].url, "secret": SECRET, **ca},
        {"name": "untrusted", "url": receivers["untrusted"].url, "secret": SECRET},
        {"name": "mtls", "url": receivers["mtls"].url, "secret": SECRET, **ca, **cert},
        {"name": "no_cert", "url": receivers["no_cert"].url, "secret": SECRET, **ca},
    ]
    events: dict[str, Any] = {"events": ["job.failed"], "max_attempts": 1000, "breaker_failures": 1000}
    assert tls_sim.url is not None and tls_sim.url.startswith("https://")
    settings = config.settings(
        tmp_path, tls_sim.url, port=free_port(), webhooks=[{**h, **events} for h in hooks],
        sections={"upstream": {**ca, **cert}, "watchlist": None},
    )  # fmt: skip
    daemon = InProcessDaemon(settings)
    await daemon.start()
    try:
        job = tls_sim.add_job(status="failed", error="row 17").id
        async with (
            aiohttp.ClientSession() as http,
            http.post(daemon.base + "/v1/watches", json={"job_id": job}) as r,
        ):
            assert r.status == 201, await r.text()
        await receivers["trusted"].wait_for(1, within_s=15)
        await receivers["mtls"].wait_for(1, within_s=15)
        for name in ("trusted", "mtls"):  # TestReceiver records only what its own verifier accepted
            assert delivered_types(receivers[name]) == ["job.failed"]
            assert receivers[name].deliveries[0].body["data"]["job"]["id"] == job

        registry = daemon.daemon.metrics.registry

        def failed(name: str) -> float:
            return (
                registry.get_sample_value(
                    "watcher_webhook_deliveries_total", {"webhook": name, "outcome": "retry"}
                )
                or 0.0
            )

        await eventually(
            lambda: failed("untrusted") >= 2 and failed("no_cert") >= 2, 15, "failed TLS attempts"
        )
        [untrusted] = await deliveries(daemon.base, "untrusted")
        [no_cert] = await deliveries(daemon.base, "no_cert")
        assert untrusted["state"] == no_cert["state"] == "pending"
        assert untrusted["attempts"] >= 2 and no_cert["attempts"] >= 2
        assert "certificate is not trusted" in untrusted["last_error"]
        # The server's refusal comes after the client's side of the handshake: a TLS alert or a reset.
        assert no_cert["last_error"].startswith(("connection error", "TLS")), no_cert["last_error"]
        for name in ("untrusted", "no_cert"):
            assert receivers[name].deliveries == [] and receivers[name].rejected == 0
        assert daemon.running
    finally:
        assert await daemon.stop() == 0


async def test_https_callback_with_ca_file_and_client_certificate(
    tmp_path: Path, pki: Pki, sim: Simulator, receivers: dict[str, TestReceiver]
) -> None:
    """`[callbacks]` TLS keys hold for every callback: an mTLS receiver on an allowed loopback address gets
    the signed event over HTTPS (the guard still checks the address; no proxy is involved)."""
    assert sim.url is not None
    callbacks = {
        "enabled": True, "secret": SECRET, "allow_networks": ["127.0.0.0/8"], "ca_file": str(pki.ca),
        "client_cert_file": str(pki.client_cert), "client_key_file": str(pki.client_key),
        "retry_initial_s": 0.05,
    }  # fmt: skip
    settings = config.settings(
        tmp_path, sim.url, port=free_port(), sections={"callbacks": callbacks, "watchlist": None}
    )
    assert settings.callbacks.require_https  # the default: an https:// callback, as in production
    daemon = InProcessDaemon(settings)
    await daemon.start()
    try:
        job = sim.add_job(status="active").id
        body = {"job_id": job, "callback": {"url": receivers["mtls"].url, "events": ["job.failed"]}}
        async with aiohttp.ClientSession() as http, http.post(daemon.base + "/v1/watches", json=body) as r:
            assert r.status == 201, await r.text()
        sim.set_status(job, "failed", error="boom")
        [got] = await receivers["mtls"].wait_for(1, within_s=15)
        assert got.type == "job.failed" and got.body["data"]["job"]["id"] == job
    finally:
        assert await daemon.stop() == 0


async def test_https_upstream_through_the_environment_s_proxy(
    tmp_path: Path, pki: Pki, tls_sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With HTTPS_PROXY set when the daemon starts, polls tunnel through it (CONNECT), and TLS with the
    upstream's `ca_file` and client certificate runs end to end inside the tunnel."""
    proxy = ForwardProxy()
    await proxy.start()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert tls_sim.url is not None
    mtls = {
        "ca_file": str(pki.ca),
        "client_cert_file": str(pki.client_cert),
        "client_key_file": str(pki.client_key),
    }
    settings = config.settings(
        tmp_path, tls_sim.url, port=free_port(), sections={"upstream": mtls, "watchlist": None}
    )
    daemon = InProcessDaemon(settings)
    await daemon.start()
    try:
        job = tls_sim.add_job(status="failed").id
        async with aiohttp.ClientSession() as http:
            async with http.post(daemon.base + "/v1/watches", json={"job_id": job}) as r:
                assert r.status == 201

            async def finished() -> bool:
                async with http.get(f"{daemon.base}/v1/watches/{job}") as r:
                    return bool((await r.json())["status"] == "failed")

            await eventually(finished, 15, "the job polled as failed")
        assert proxy.seen and set(proxy.seen) == {f"CONNECT {tls_sim.url.split('/')[2]}"}
    finally:
        assert await daemon.stop() == 0
        await proxy.stop()


async def test_a_workspace_with_its_own_tls_keys(tmp_path: Path, pki: Pki, sim: Simulator) -> None:
    """The default workspace is polled over plain HTTP; workspace `other`, whose `base_url` requires mTLS,
    with its own `ca_file` and client certificate: both jobs are seen."""
    other = Simulator(workspace_slug="other")
    await other.start(ssl_context=pki.server_context(require_client_cert=True))
    try:
        assert sim.url is not None and other.url is not None
        mtls = {"ca_file": str(pki.ca), "client_cert_file": str(pki.client_cert),
                "client_key_file": str(pki.client_key)}  # fmt: skip
        sections = {"upstream.workspaces.other": {"base_url": other.url, **mtls}, "watchlist": None}
        daemon = InProcessDaemon(config.settings(tmp_path, sim.url, port=free_port(), sections=sections))
        await daemon.start()
        try:
            mine = sim.add_job(status="failed").id
            theirs = other.add_job("0f6a2d1e-4c1b-4a7e-9a51-8f7f0d6b2c33", status="failed").id  # not `mine`
            async with aiohttp.ClientSession() as http:
                for job, ws in ((mine, "acme"), (theirs, "other")):
                    async with http.post(
                        daemon.base + "/v1/watches", json={"job_id": job, "workspace": ws}
                    ) as r:
                        assert r.status == 201

                async def both_failed() -> bool:
                    statuses = []
                    for job in (mine, theirs):
                        async with http.get(f"{daemon.base}/v1/watches/{job}") as r:
                            statuses.append((await r.json())["status"])
                    return statuses == ["failed", "failed"]

                await eventually(both_failed, 15, "both workspaces polled")
        finally:
            assert await daemon.stop() == 0
    finally:
        await other.stop()
