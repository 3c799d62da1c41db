"""Helpers shared by the store-outage tests: probe a running daemon, wait with deadlines, read its log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.conftest import DaemonProc, Receiver, Sim
from tests.support.eventually import eventually
from tests.support.lines import whole_lines


async def probe(api: str, path: str, timeout: float = 5.0) -> tuple[int, Any, float]:
    """GET `path`: (status, JSON body or text, seconds it took); status 0 when nothing answers."""
    started = time.monotonic()
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s,
            s.get(api + path) as r,
        ):
            body: Any = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, body, time.monotonic() - started
    except (aiohttp.ClientError, TimeoutError):
        return 0, None, time.monotonic() - started


async def metric(api: str, name: str) -> float | None:
    """The value of one sample of the daemon's /metrics (`name` with its labels), None if absent."""
    status, text, _ = await probe(api, "/metrics")
    if status != 200:
        return None
    for line in str(text).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


async def store_errors(api: str) -> float:
    """`watcher_store_errors_total`, all kinds: one more each time a loop finds the store out."""
    status, text, _ = await probe(api, "/metrics")
    lines = str(text).splitlines() if status == 200 else []
    return sum(float(x.split()[-1]) for x in lines if x.startswith("watcher_store_errors_total{"))


async def store_retried(api: str, times: int, timeout: float = 30.0) -> None:
    """Wait until the daemon's loops have found the store out `times` more times: a known event, after
    which a negative check ("nothing was polled meanwhile") means something."""
    start = await store_errors(api)

    async def retried() -> bool:
        return await store_errors(api) >= start + times

    await until(retried, timeout, f"{times} more attempts on the store")


async def metric_is(api: str, name: str, value: float) -> bool:
    """True if the sample `name` has `value` now."""
    return await metric(api, name) == value


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """`eventually(check, timeout, what)`, for an async check."""
    await eventually(check, timeout, what)


async def readyz_is(api: str, status: int) -> bool:
    """True if /readyz answers `status` now."""
    return (await probe(api, "/readyz"))[0] == status


def log_lines(path: Path) -> list[str]:
    """Every non-empty whole line the daemon wrote (stdout and stderr go to the same file)."""
    return whole_lines(path)


def assert_all_json(path: Path) -> list[dict[str, Any]]:
    """Every line of the daemon's output is one JSON object with an event; returns them."""
    out = []
    for line in log_lines(path):
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"a log line is not JSON: {line[:300]!r}") from None
        assert isinstance(obj, dict) and "event" in obj, line[:300]
        out.append(obj)
    return out


async def scripted_jobs(sim: Sim, n: int, first_s: float, spread_s: float) -> dict[str, str]:
    """`n` jobs that turn active, then end (success or failed) between `first_s` and `first_s + spread_s`
    from now; job id -> the event type its end must be delivered as."""
    jobs = {}
    for i in range(n):
        end = "failed" if i % 4 == 0 else "success"
        at = first_s + spread_s * i / max(1, n - 1)
        job = await sim.create_job(
            status="queued", script=[{"after_s": 0.2, "status": "active"}, {"after_s": at, "status": end}]
        )
        jobs[job] = f"job.{end}"
    return jobs


async def active_jobs(sim: Sim, n: int) -> list[str]:
    """`n` jobs that stay active until the test ends them."""
    return [await sim.create_job(status="active") for _ in range(n)]


async def all_polled(sim: Sim, jobs: list[str], timeout: float = 20.0) -> None:
    """Wait until every job has been polled at least once (the daemon watches them all)."""

    async def check() -> bool:
        seen = {r["job_id"] for r in await sim.requests()}
        return seen >= set(jobs)

    await until(check, timeout, f"all {len(jobs)} jobs polled")


async def end_jobs(sim: Sim, jobs: list[str]) -> dict[str, str]:
    """End every job (a quarter failed, the rest success); job id -> the event type to be delivered."""
    out = {}
    for i, job in enumerate(jobs):
        end = "failed" if i % 4 == 0 else "success"
        await sim.set_status(job, end, error="boom" if end == "failed" else None)
        out[job] = f"job.{end}"
    return out


def delivered_ends(receiver: Receiver) -> dict[str, set[str]]:
    """Job id -> the webhook-ids of its terminal deliveries (a duplicate keeps its id)."""
    out: dict[str, set[str]] = {}
    for d in receiver.deliveries():
        if d["type"] in ("job.success", "job.failed"):
            out.setdefault(d["body"]["data"]["job"]["id"], set()).add(d["id"])
    return out


async def every_end_delivered(receiver: Receiver, jobs: dict[str, str], timeout: float) -> None:
    """Wait until each job's terminal event arrived, then check types and ids."""

    async def check() -> bool:
        return set(delivered_ends(receiver)) >= set(jobs)

    await until(check, timeout, f"terminal events of {len(jobs)} jobs delivered")
    ends = ("job.success", "job.failed")
    types = {d["body"]["data"]["job"]["id"]: d["type"] for d in receiver.deliveries() if d["type"] in ends}
    assert types == jobs
    assert all(len(ids) == 1 for ids in delivered_ends(receiver).values()), "a duplicate changed its id"


class PipedDaemon(DaemonProc):
    """`watcher run` whose output reaches `log_path` through a pipe and a copying thread, so that a size
    limit on the files the daemon writes (RLIMIT_FSIZE) never applies to its log; `preexec` runs in the
    child before it starts."""

    def __init__(
        self, config: Path, log_path: Path, api_port: int, preexec: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config, log_path, api_port)
        self.preexec = preexec
        self._copier: threading.Thread | None = None

    def start(self) -> None:
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
        self.proc = subprocess.Popen(  # type: ignore[assignment]
            [sys.executable, "-m", "watcher", "run", "-c", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.config.parent,
            preexec_fn=self.preexec,  # only signal and rlimit set-up, before exec
        )
        out = self.proc.stdout
        assert out is not None

        def copy() -> None:
            with out, self.log_path.open("ab") as f:
                for line in out:
                    f.write(line)
                    f.flush()

        self._copier = threading.Thread(target=copy, daemon=True)
        self._copier.start()

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._copier is not None:
            self._copier.join(5)
        return self.proc.returncode
