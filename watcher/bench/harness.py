"""The processes of a benchmark run: simulator, receiver and daemons, each its own process on loopback.

Every child is started with a deadline to report that it listens and stopped with a deadline (SIGTERM, then
SIGKILL). CPU time and memory come from `/proc/PID/stat` and `/proc/PID/status`, so what is measured is the
whole process, threads included, as an operator's tools would see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from watcher.bench import stores
from watcher.errors import WatcherError
from watcher.models import Registration, SavedPoll, Source
from watcher.store import open_store
from watcher.store.postgres import PostgresStore

# The simulator's documented throwaway credentials: loopback-only test values, never real ones.
SIM_TOKEN, SIM_KEY, SIM_SLUG = "sim-token", "sim-key", "sim"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_STOP_TIMEOUT_S = 20.0


class BenchError(WatcherError):
    """A benchmark could not run (a child did not start, a deadline passed); the message says which."""


@dataclass(frozen=True)
class Context:
    """The settings every scenario gets: where to put files, how big to go, which store to use."""

    workdir: Path
    quick: bool = False  # tiny sizes and short windows: the smoke test, not figures to quote
    store: str = "sqlite"  # `--store`: the backend the daemons under test use
    window_s: float = 10.0  # length of each timed measurement window
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)  # watches held by one daemon in `scale`
    duration_s: float | None = None  # `--duration-s`: how long `soak` runs (None: its default)

    def say(self, message: str) -> None:
        """One progress line on stderr, so a long run shows it is alive (stdout is the table)."""
        print(f"bench: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, all its threads included."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def memory_bytes(pid: int) -> tuple[int, int]:
    """(resident set size now, its peak) of a process, from `/proc/PID/status`."""
    found = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(rest.split()[0]) * 1024
    return found.get("VmRSS", 0), found.get("VmHWM", 0)


@dataclass
class Child:
    """A started child process and where it listens."""

    name: str
    proc: asyncio.subprocess.Process
    url: str = ""
    startup_s: float = 0.0

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """CPU time the child has used so far."""
        return cpu_seconds(self.pid)

    def memory(self) -> tuple[int, int]:
        """(RSS now, peak RSS) in bytes."""
        return memory_bytes(self.pid)

    def pause(self) -> None:
        """SIGSTOP: the child stops using CPU until `resume` (its sockets stay open)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        self.proc.send_signal(signal.SIGCONT)

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited within the deadline; returns the exit status."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)  # a paused child could not act on the SIGTERM
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), _STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await asyncio.wait_for(self.proc.wait(), _STOP_TIMEOUT_S)
        return int(self.proc.returncode or 0)


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # The user's WATCHER_* variables must not leak into the daemons under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    env.update(extra or {})
    return env


async def _listening(child: Child, timeout_s: float) -> str:
    """Wait for the child's `{"event": "listening", "url": …}` line."""
    stream = child.proc.stdout
    if stream is None:
        raise BenchError(f"{child.name}: no stdout to read the address from")
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = await asyncio.wait_for(stream.readline(), left)
        except TimeoutError:
            break
        if not line:
            code = await child.proc.wait()
            raise BenchError(f"{child.name} exited with status {code} before listening")
        with contextlib.suppress(ValueError):
            msg = json.loads(line)
            if isinstance(msg, dict) and msg.get("event") == "listening":
                return str(msg["url"])
    raise BenchError(f"{child.name} did not report its address within {timeout_s:g}s")


@contextlib.asynccontextmanager
async def listening_child(
    name: str, args: Sequence[str], workdir: Path, env: dict[str, str] | None = None, timeout_s: float = 30.0
) -> AsyncIterator[Child]:
    """Run `python ARGS` until the block ends; it must print a JSON "listening" line on stdout."""
    with (workdir / f"{name}.log").open("ab") as errlog:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=errlog, env=_child_env(env)
        )
    child = Child(name, proc)
    try:
        started = time.monotonic()
        child.url = await _listening(child, timeout_s)
        child.startup_s = time.monotonic() - started
        yield child
    finally:
        await child.stop()


def simulator(workdir: Path, *extra: str) -> contextlib.AbstractAsyncContextManager[Child]:
    """`watcher simulate --port 0 …` in its own process; `url` is its upstream base URL."""
    return listening_child("simulator", ["-m", "watcher", "simulate", "--port", "0", *extra], workdir)


def sink(workdir: Path, secret: str) -> contextlib.AbstractAsyncContextManager[Child]:
    """The recording webhook receiver of `watcher.bench.sink` in its own process."""
    return listening_child(
        "sink", ["-m", "watcher.bench.sink", "--port", "0"], workdir, env={"BENCH_WEBHOOK_SECRET": secret}
    )


def write_config(
    path: Path,
    *,
    upstream_url: str,
    store_url: str,
    api_port: int,
    upstream: dict[str, Any] | None = None,
    polling: dict[str, Any] | None = None,
    webhooks: Sequence[dict[str, Any]] = (),
    watchlist: Path | None = None,
    daemon: dict[str, Any] | None = None,
) -> Path:
    """A daemon configuration for one benchmark; keys not given keep the daemon's defaults."""
    up = {"base_url": upstream_url, "token": SIM_TOKEN, "api_key": SIM_KEY, "workspace_slug": SIM_SLUG}

    def table(name: str, values: dict[str, Any]) -> str:
        return f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()) + "\n"

    text = table("upstream", {**up, **(upstream or {})})
    text += table("polling", polling or {})
    text += table("api", {"listen": f"127.0.0.1:{api_port}"})
    text += table("store", {"url": store_url})
    text += table("daemon", {"state_dir": str(path.parent), **(daemon or {})})
    text += table("log", {"level": "info", "format": "json"})
    if watchlist is not None:
        text += table("watchlist", {"path": str(watchlist), "reload_interval_s": 60.0})
    for hook in webhooks:
        text += table("[webhooks]", hook)
    path.write_text(text, encoding="utf-8")
    return path


def daemon_config(ctx: Context, name: str, sim: Child, store_url: str, **keys: Any) -> tuple[Path, int]:
    """`NAME.toml` in the work directory for a daemon polling `sim`, and the free port its API listens on;
    `keys` are `write_config`'s sections."""
    port = free_port()
    return write_config(
        ctx.workdir / f"{name}.toml", upstream_url=sim.url, store_url=store_url, api_port=port, **keys
    ), port


class Daemon(Child):
    """A `watcher run` child: its API address, readiness and metrics."""

    api: str = ""

    async def metrics(self, session: aiohttp.ClientSession) -> dict[str, float]:
        """Every sample of `/metrics` summed over its labels, by sample name (e.g. `watcher_polls_total`)."""
        async with session.get(self.api + "/metrics") as resp:
            text = await resp.text()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
        return out

    async def polls_total(self, session: aiohttp.ClientSession) -> float:
        """Polls the daemon has finished so far, whatever their outcome."""
        return (await self.metrics(session)).get("watcher_polls_total", 0.0)

    def hangup(self) -> None:
        """SIGHUP: re-read the watch-list file now."""
        self.proc.send_signal(signal.SIGHUP)


async def _wait_ready(d: Daemon, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if d.proc.returncode is not None:
                raise BenchError(f"daemon exited with status {d.proc.returncode}; see {d.name}.log")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(d.api + "/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.02)
    raise BenchError(f"daemon not ready within {timeout_s:g}s; see {d.name}.log")


@contextlib.asynccontextmanager
async def daemon(
    workdir: Path, config: Path, api_port: int, name: str = "daemon", ready_timeout_s: float = 300.0
) -> AsyncIterator[Daemon]:
    """`watcher run -c CONFIG` until the block ends; `startup_s` is the time from spawn to `/readyz` 200."""
    started = time.monotonic()
    with (workdir / f"{name}.log").open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "watcher", "run", "-c", str(config),
            stdout=out, stderr=asyncio.subprocess.STDOUT, env=_child_env(), cwd=workdir,
        )  # fmt: skip
    d = Daemon(name, proc)
    d.api = f"http://127.0.0.1:{api_port}"
    try:
        await _wait_ready(d, ready_timeout_s)
        d.startup_s = time.monotonic() - started
        yield d
    finally:
        await d.stop()


def job_ids(n: int, seed: int) -> list[str]:
    """`n` distinct random job ids, the same for the same seed."""
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


async def build_store(
    url: str, ids: Sequence[str], now: float, batch: int = 50_000, *, observed: bool = False
) -> float:
    """Register `ids` through the store API in big batches (no daemon running); returns the seconds taken.

    `observed`: each watch is then claimed and saved once as seen `active`, as after its first poll, so a
    daemon started on the store polls quietly (no transition, no event) from its first poll on.
    """
    started = time.monotonic()
    ordered = sorted(ids)  # in key order a B-tree only appends: several times faster than random order
    # Observed watches are registered and seen in the past, and due again before `now`: a daemon's restore
    # spreads overdue watches (on PostgreSQL it leaves the others alone), and the loop below ends.
    at = now - 2 * _SEEN_DUE_S if observed else now
    # On PostgreSQL a store that is not shared takes every time as given: a shared one registers at the
    # database's clock, so the watches it had not seen yet were due after the ones it had (saved due at
    # `at + _SEEN_DUE_S`), and the loop below met a seen watch again after its first batch: at a million
    # watches only the first 50,000 were seen, and the daemon's windows timed first observations.
    store = PostgresStore(url, shared=False) if stores.is_postgres(url) else open_store(url)
    await store.open()
    try:
        for i in range(0, len(ordered), batch):
            regs = [Registration(j, SIM_SLUG, Source.API) for j in ordered[i : i + batch]]
            await store.register(regs, at)
        seen: set[str] = set()
        while observed and len(seen) < len(ordered):
            # Seen watches are due after `at`, so they are not claimed again; stop at the first one seen
            # twice all the same rather than loop.
            claimed = await store.claim_due(at, batch, _SEEN_DUE_S)
            fresh = [w for w in claimed if w.job_id not in seen]
            if len(fresh) < len(claimed):
                await store.release([w for w in claimed if w.job_id in seen])
            if not fresh:
                break
            for w in fresh:
                w.status, w.polls, w.streak, w.last_polled_at = "active", 1, 1, at
                w.next_poll_at = at + _SEEN_DUE_S
                seen.add(w.job_id)
            await store.save_polls([SavedPoll(w) for w in fresh])
        if observed and len(seen) < len(ordered):
            raise BenchError(f"building the store: only {len(seen):,} of {len(ordered):,} watches were seen")
    finally:
        await store.close()
    return time.monotonic() - started


_SEEN_DUE_S = 600.0


def fresh_store_url(store: str, workdir: Path, name: str) -> str:
    """A new, empty store for one benchmark daemon: a SQLite file, or a fresh schema in `--store`'s database.

    A PostgreSQL schema is dropped when the scenario ends (`stores.drop_fresh_schemas`).
    """
    if store == "sqlite":
        return f"sqlite:///{workdir / (name + '.db')}"
    if stores.is_postgres(store):
        return stores.fresh_schema_url(store, name)
    raise BenchError(f"--store: {store!r} is neither sqlite nor a postgresql:// URL")
