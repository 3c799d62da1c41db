"""End-to-end fixtures: `watcher simulate`, an independent webhook receiver and `watcher run`, all as
subprocesses on loopback, each started on a free port and stopped by the fixture that opened it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import config
from tests.support.certs import Pki, make_pki
from tests.support.eventually import eventually
from tests.support.lines import whole_lines

ROOT = Path(__file__).resolve().parents[2]
RECEIVER_SCRIPT = ROOT / "tests" / "support" / "standard_webhooks.py"
SIM_TOKEN, SIM_KEY, SIM_SLUG = "sim-token-e2e-5ecret", "sim-key-e2e-5ecret", "acme"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _read_listening(proc: subprocess.Popen[str], timeout: float = 20.0) -> str:
    """Wait for the child's `{"event": "listening", "url": …}` line and return the url."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"child exited with {proc.returncode} before listening")
            continue
        with contextlib.suppress(ValueError):
            msg = json.loads(line)
            if isinstance(msg, dict) and msg.get("event") == "listening":
                return str(msg["url"])
    raise RuntimeError("child did not report its address in time")


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


class Sim:
    """Handle on a `watcher simulate` subprocess and its control API."""

    def __init__(
        self, proc: subprocess.Popen[str], base_url: str, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.proc = proc
        self.base_url = base_url  # e.g. http://127.0.0.1:PORT/api/v2
        self.root = base_url.split("/api/")[0]
        self.ssl_context = ssl_context  # what verifies an https:// simulator (its --tls-cert)

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        verify = True if self.ssl_context is None else self.ssl_context
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, self.root + path, json=body, ssl=verify) as r,
        ):
            assert r.status < 300, f"{method} {path} -> {r.status}: {await r.text()}"
            return await r.json() if r.content_type == "application/json" else None

    async def create_job(self, **spec: Any) -> str:
        job = await self.call("POST", "/_sim/jobs", spec)
        return str(job["id"])

    async def set_status(self, job_id: str, status: str, error: str | None = None) -> None:
        await self.call("POST", f"/_sim/jobs/{job_id}", {"status": status, "error": error})

    async def faults(self, **faults: float) -> None:
        await self.call("PUT", "/_sim/faults", faults)

    async def requests(self, job_id: str | None = None) -> list[dict[str, Any]]:
        q = f"?job_id={job_id}" if job_id else ""
        data = await self.call("GET", f"/_sim/requests{q}")
        return list(data["requests"] if isinstance(data, dict) else data)


class Receiver:
    """Handle on the independent Standard Webhooks receiver (tests/support/standard_webhooks.py)."""

    def __init__(self, proc: subprocess.Popen[str], url: str, out: Path) -> None:
        self.proc = proc
        self.url = url
        self.out = out
        self.root = url.rsplit("/", 1)[0] if url.count("/") > 2 else url

    def deliveries(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in whole_lines(self.out)]

    async def set_status(self, status: int | None) -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.put(self.root + "/_ctl/status", json={"status": status}) as r,
        ):
            assert r.status == 200

    async def wait_for(self, predicate: Any, timeout: float) -> list[dict[str, Any]]:
        """The deliveries once `predicate(deliveries)` holds, waiting up to `timeout` seconds."""

        def met() -> list[dict[str, Any]] | None:
            got = self.deliveries()
            return got if predicate(got) else None

        try:
            return await eventually(met, timeout, "receiver condition")
        except AssertionError:
            got = self.deliveries()
            raise AssertionError(
                f"receiver condition not met in {timeout}s; got {len(got)} deliveries"
            ) from None


class DaemonProc:
    """`watcher run -c CONFIG` as a subprocess that can be killed and restarted on the same state."""

    def __init__(self, config: Path, log_path: Path, api_port: int) -> None:
        self.config = config
        self.log_path = log_path
        self.api = f"http://127.0.0.1:{api_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.env: dict[str, str] = {}  # added to the daemon's environment (e.g. HTTPS_PROXY)
        self.ssl_context: ssl.SSLContext | None = None  # verifies an https:// API (`api.tls_*`)

    def start(self) -> None:
        self.starts += 1
        logf = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")} | self.env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "-c", str(self.config)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.config.parent,
        )
        logf.close()

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until /readyz answers 200; fail with the log's tail if the daemon exits or is not ready."""
        async with aiohttp.ClientSession() as s:

            async def ready() -> bool:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()[-3000:]}")
                verify = True if self.ssl_context is None else self.ssl_context
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(self.api + "/readyz", ssl=verify) as r:
                        return r.status == 200
                return False

            try:
                await eventually(ready, timeout, "ready")
            except AssertionError as exc:
                if "daemon exited" in str(exc):
                    raise
                raise AssertionError("daemon not ready in time:\n" + self.log_text()[-3000:]) from None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return _stop(self.proc, signal.SIGTERM, timeout)  # type: ignore[arg-type]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if isinstance(msg, dict):
                    out.append(msg)
        return out


@contextlib.contextmanager
def running_sim(*args: str, ssl_context: ssl.SSLContext | None = None) -> Iterator[Sim]:
    """`watcher simulate` in a subprocess with the tests' credentials; `args` are more of its options
    (e.g. --tls-cert/--tls-key, then `ssl_context` verifies it)."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "watcher", "simulate", "--port", "0", "--seed", "7", "--token", SIM_TOKEN,
            "--api-key", SIM_KEY, "--workspace-slug", SIM_SLUG, *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    try:
        yield Sim(proc, _read_listening(proc), ssl_context)
    finally:
        _stop(proc)


@pytest.fixture
def sim() -> Iterator[Sim]:
    with running_sim() as s:
        yield s


@contextlib.contextmanager
def running_receiver(out: Path, secret: str, *tls_args: str) -> Iterator[Receiver]:
    """The independent Standard Webhooks receiver in a subprocess, verifying with `secret` into `out`;
    `tls_args` are its --tls-* options (HTTPS, mTLS)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(RECEIVER_SCRIPT),
            "--port",
            "0",
            "--secret",
            secret,
            "--out",
            str(out),
            *tls_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield Receiver(proc, _read_listening(proc), out)
    finally:
        _stop(proc)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    with running_receiver(tmp_path / "received.jsonl", WEBHOOK_SECRET) as r:
        yield r


def write_config(
    tmp_path: Path,
    sim: Sim,
    receiver: Receiver,
    api_port: int,
    *,
    polling: dict[str, Any] | None = None,
    webhook: dict[str, Any] | None = None,
    upstream: dict[str, Any] | None = None,
    watchlist: bool | Path = True,
    store_url: str | None = None,
    daemon: dict[str, Any] | None = None,
    reload_interval_s: float = 0.2,
    more_webhooks: Sequence[dict[str, Any]] = (),
) -> Path:
    """A TOML config for a fast test daemon (tests/support/config.py); `polling`/`webhook`/`upstream`/
    `daemon` override keys, `store_url` replaces the SQLite file, `watchlist` is a path to watch
    another file (or False for none), reloaded every `reload_interval_s`, and `more_webhooks` follow the
    receiver's webhook as they are."""
    pol = {
        "initial_interval_s": 0.05,
        "multiplier": 1.5,
        "max_interval_s": 0.3,
        "jitter": 0.2,
        "not_found_limit": 5,
        "error_backoff_max_s": 0.5,
        "max_watch_s": 600.0,
        **(polling or {}),
    }
    hook = {
        "name": "ops",
        "url": receiver.url,
        "secret": WEBHOOK_SECRET,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.5,
        "max_attempts": 100,
        "timeout_s": 2.0,
        **(webhook or {}),
    }
    up = {
        "token": SIM_TOKEN,
        "api_key": SIM_KEY,
        "workspace_slug": SIM_SLUG,
        "timeout_s": 2.0,
        "max_concurrency": 32,
        "rate_limit_per_s": 2000.0,
        **(upstream or {}),
    }
    state = tmp_path / "state"
    return config.write_config(
        tmp_path,
        sim.base_url,
        port=api_port,
        webhooks=[hook, *more_webhooks],
        sections={
            "upstream": up,
            "polling": pol,
            "store": {"url": store_url or f"sqlite:///{state / 'watcher.db'}"},
            "daemon": {"state_dir": str(state), "shutdown_grace_s": 5.0, **(daemon or {})},
            "log": {"level": "info", "format": "json"},
            "watchlist": _watchlist(watchlist, reload_interval_s),
        },
        name="watcher.toml",
    )


def _watchlist(watchlist: bool | Path, reload_interval_s: float) -> dict[str, Any] | None:
    if watchlist is False:
        return None
    section: dict[str, Any] = {"reload_interval_s": reload_interval_s}
    if isinstance(watchlist, Path):
        section["path"] = str(watchlist)
    return section


@pytest.fixture
async def daemon_factory(tmp_path: Path) -> AsyncIterator[Any]:
    """Build daemons from a config; every one still running at the end is stopped."""
    made: list[DaemonProc] = []

    def make(config: Path, api_port: int) -> DaemonProc:
        d = DaemonProc(config, tmp_path / f"daemon-{len(made)}.log", api_port)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.alive():
            d.kill()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with a server certificate for loopback and a client certificate (tests/support/certs.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))
