"""TLS and proxies as a user runs them: `watcher run`, `watcher simulate` and the independent receiver as
subprocesses on loopback, with certificates made for the test (tests/support/certs.py).

- Everything over HTTPS: the simulator behind `--tls-cert`, polled with `[upstream] ca_file`; a receiver
  that requires a client certificate, reached with the webhook's `ca_file` and client certificate; the API
  itself behind `api.tls_*`, answering `/healthz` to a client that trusts the test CA and the `watcher` CLI
  with `--ca-file` or `$WATCHER_API_CA_FILE`, and refusing one that does not.
- A proxy from the environment: with HTTPS_PROXY/HTTP_PROXY set for the daemon, both configured webhooks
  (https: a CONNECT tunnel; http: an absolute-form request) go through a recording proxy, the upstream named
  in NO_PROXY does not, and a callback never does (the address guard must see the address it connects to).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import (
    SIM_KEY,
    SIM_TOKEN,
    WEBHOOK_SECRET,
    DaemonProc,
    Receiver,
    running_receiver,
    running_sim,
    write_config,
)
from tests.support import config
from tests.support.certs import Pki
from tests.support.http_proxy import ForwardProxy
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

CB_SECRET = "whsec_" + base64.b64encode(b"e2e-tls-proxy-callback-key").decode()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The `watcher` client command, with none of the test runner's WATCHER_ or proxy variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_") and "proxy" not in k.lower()}
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args], env=base | (env or {}), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


async def test_https_upstream_mtls_webhook_and_https_api(
    tmp_path: Path, pki: Pki, daemon_factory: Any
) -> None:
    """Polls, deliveries and the API all over TLS verified with the test CA; the CLI talks to the API with
    --ca-file (or $WATCHER_API_CA_FILE, the URL taken from -c as https://) and fails without it."""
    tls = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    with (
        running_sim(*tls, ssl_context=pki.client_context()) as sim,
        running_receiver(
            tmp_path / "got.jsonl", WEBHOOK_SECRET, *tls, "--tls-client-ca", str(pki.ca)
        ) as hook,
    ):
        assert sim.base_url.startswith("https://") and hook.url.startswith("https://")
        port = free_port()
        mtls = {"ca_file": str(pki.ca), "client_cert_file": str(pki.client_cert),
                "client_key_file": str(pki.client_key)}  # fmt: skip
        path = write_config(tmp_path, sim, hook, port, watchlist=False, upstream={"ca_file": str(pki.ca)},
                            webhook={**mtls, "events": ["job.failed"]})  # fmt: skip
        text = path.read_text().replace(
            "[api]\n", f'[api]\ntls_cert_file = "{pki.server_cert}"\ntls_key_file = "{pki.server_key}"\n', 1
        )
        path.write_text(text)
        daemon: DaemonProc = daemon_factory(path, port)
        daemon.api, daemon.ssl_context = f"https://127.0.0.1:{port}", pki.client_context()
        daemon.start()
        await daemon.wait_ready()

        async with aiohttp.ClientSession() as http:
            async with http.get(daemon.api + "/healthz", ssl=pki.client_context()) as r:
                assert r.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(daemon.api + "/healthz")  # the system's trust store knows no test CA
            with pytest.raises(aiohttp.ClientError):
                await http.get(f"http://127.0.0.1:{port}/healthz")  # plain HTTP on the HTTPS port

        job = await sim.create_job(status="active", name="customer.createBatch")
        added = cli("watches", "add", job, "--url", daemon.api, "--ca-file", str(pki.ca))
        assert added.returncode == 0, added.stderr
        listed = cli("watches", "list", "-c", str(path), "--json", env={"WATCHER_API_CA_FILE": str(pki.ca)})
        assert listed.returncode == 0, listed.stderr
        assert job in listed.stdout
        refused = cli("watches", "list", "--url", daemon.api)
        assert refused.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr, refused.stderr
        missing = cli("watches", "list", "--url", daemon.api, "--ca-file", str(tmp_path / "nope.pem"))
        assert missing.returncode == 2 and "--ca-file: cannot read" in missing.stderr

        await sim.set_status(job, "failed", error="quota exceeded")
        got = await hook.wait_for(lambda d: len(d) >= 1, timeout=20)  # verified by the receiver's own check
        assert [(d["type"], d["body"]["data"]["job"]["id"]) for d in got] == [("job.failed", job)]
        assert daemon.stop() == 0
        listening = [e for e in daemon.log_events() if e.get("event") == "api.listening"]
        assert listening and all(e["scheme"] == "https" for e in listening)


async def test_webhooks_go_through_the_proxy_callbacks_and_no_proxy_hosts_do_not(
    tmp_path: Path, pki: Pki, receiver: Receiver, daemon_factory: Any
) -> None:
    """HTTPS_PROXY and HTTP_PROXY carry both webhooks; NO_PROXY's upstream and every callback go direct."""
    proxy = ForwardProxy()
    await proxy.start()
    tls = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    try:
        with (
            running_sim() as sim,
            running_receiver(tmp_path / "secure.jsonl", WEBHOOK_SECRET, *tls) as secure,
            running_receiver(tmp_path / "callbacks.jsonl", CB_SECRET) as cb,
        ):
            upstream = sim.base_url.replace("127.0.0.1", "localhost")  # NO_PROXY names localhost
            port = free_port()
            hook: dict[str, Any] = {
                "secret": WEBHOOK_SECRET,
                "events": ["job.failed"],
                "retry_initial_s": 0.05,
            }
            path = config.write_config(
                tmp_path, upstream, port=port, name="watcher.toml",
                webhooks=[{**hook, "name": "secure", "url": secure.url, "ca_file": str(pki.ca)},
                          {**hook, "name": "plain", "url": receiver.url}],
                sections={
                    "upstream": {"token": SIM_TOKEN, "api_key": SIM_KEY},
                    "watchlist": None,
                    "log": {"format": "json"},
                    "callbacks": {"enabled": True, "secret": CB_SECRET, "require_https": False,
                                  "allow_networks": ["127.0.0.0/8"], "retry_initial_s": 0.05},
                },
            )  # fmt: skip
            daemon: DaemonProc = daemon_factory(path, port)
            proxy_url = f"http://127.0.0.1:{proxy.port}"
            daemon.env = {"HTTPS_PROXY": proxy_url, "HTTP_PROXY": proxy_url, "NO_PROXY": "localhost"}
            daemon.start()
            await daemon.wait_ready()

            job = await sim.create_job(status="active", name="customer.createBatch")
            body = {"job_id": job, "callback": {"url": cb.url, "events": ["job.failed"]}}
            async with aiohttp.ClientSession() as http, http.post(daemon.api + "/v1/watches", json=body) as r:
                assert r.status == 201, await r.text()
            await sim.set_status(job, "failed", error="quota exceeded")
            for r in (secure, receiver, cb):
                got = await r.wait_for(lambda d: len(d) >= 1, timeout=20)
                assert [d["type"] for d in got] == ["job.failed"]

            def netloc(url: str) -> str:
                return url.split("/")[2]

            seen = proxy.targets()
            assert f"CONNECT {netloc(secure.url)}" in proxy.seen  # https: a tunnel through the proxy
            assert netloc(receiver.url) in seen and any(s.startswith("POST http://") for s in proxy.seen)
            assert netloc(cb.url) not in seen  # callbacks: never through the proxy
            assert not any(netloc(sim.base_url).split(":")[1] in s for s in seen)  # NO_PROXY: direct
            assert daemon.stop() == 0
    finally:
        await proxy.stop()
