"""`scale`, watch-list part: a daemon reloads a watch-list file of the largest size on SIGHUP (SPEC §16).

The daemon starts on an empty store with an empty watch-list file; the file is then replaced by one of
`size` lines (atomically) and the daemon is sent SIGHUP. Measured: the time from the signal to its
`watchlist.reloaded` log line, its RSS rise (now and at peak, over the RSS before the signal), and the
slowest `/healthz` answer while the reload ran, asking every 20 ms. Polling is rate-limited low so that
the reload, not the polls of the new watches, is what is timed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from watcher.bench import harness

HEALTHZ_EVERY_S = 0.02
MAX_STALL_S = 0.5  # the slowest /healthz answer during the reload; the loop's own target is ~100 ms
RELOAD_TIMEOUT_S = 600.0
POLL_RATE = 50.0  # polls per second while the new watches come due: the reload is what is timed


@dataclass
class Reload:
    """What one large reload cost the daemon."""

    lines: int
    seconds: float = 0.0
    rss_before: int = 0
    rss_after: int = 0
    peak: int = 0
    slowest_healthz_s: float = 0.0
    healthz_answers: int = 0


def _write(path: Path, ids: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for i in range(0, len(ids), 10_000):
            f.write("".join(f"{j}\n" for j in ids[i : i + 10_000]))
    os.replace(tmp, path)


def _reloaded(log: Path, offset: int, lines: int) -> tuple[bool, int]:
    """Whether the log from `offset` has the reload of `lines` entries; the offset read up to."""
    with log.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    for raw in data[:end].splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if entry.get("event") == "watchlist.reloaded" and entry.get("entries") == lines:
            return True, offset + end
    return False, offset + end


async def measure(ctx: harness.Context, sim: harness.Child, lines: int) -> Reload:
    """Start a daemon on an empty watch-list, replace the file by `lines` ids, SIGHUP it and time it."""
    out = Reload(lines)
    name = f"scale-reload-{lines}"
    path = ctx.workdir / f"{name}.watchlist"
    path.write_text("", encoding="utf-8")
    store_url = harness.fresh_store_url(ctx.store, ctx.workdir, name)
    polling = {"initial_interval_s": 3600.0, "multiplier": 1.0, "max_interval_s": 3600.0}
    config, port = harness.daemon_config(
        ctx,
        name,
        sim,
        store_url,
        upstream={"rate_limit_per_s": POLL_RATE},
        polling=polling,
        watchlist=path,
    )
    ctx.say(f"scale: writing a watch-list of {lines:,} lines")
    ids = harness.job_ids(lines, seed=lines + 1)
    staged = ctx.workdir / f"{name}.full"
    await asyncio.to_thread(_write, staged, ids)
    del ids
    log = ctx.workdir / f"{name}-daemon.log"
    async with (
        harness.daemon(ctx.workdir, config, port, name=f"{name}-daemon") as d,
        aiohttp.ClientSession() as s,
    ):
        await asyncio.sleep(1.0)  # past the start-up reload of the empty file
        out.rss_before, _ = d.memory()
        offset = log.stat().st_size
        os.replace(staged, path)
        ctx.say(f"scale: SIGHUP, reloading {lines:,} lines")
        started = time.monotonic()
        d.hangup()
        done = asyncio.Event()
        prober = asyncio.create_task(_probe(d, s, done, out))
        try:
            while time.monotonic() - started < RELOAD_TIMEOUT_S:
                finished, offset = _reloaded(log, offset, lines)
                if finished:
                    out.seconds = time.monotonic() - started
                    break
                await asyncio.sleep(0.05)
            else:
                raise harness.BenchError(f"scale: no reload of {lines:,} lines in {RELOAD_TIMEOUT_S:g}s")
        finally:
            done.set()
            await prober
        out.rss_after, out.peak = d.memory()
    return out


async def _probe(d: harness.Daemon, s: aiohttp.ClientSession, done: asyncio.Event, out: Reload) -> None:
    """Ask `/healthz` every HEALTHZ_EVERY_S until `done`; keep the slowest answer's time."""
    while not done.is_set():
        t0 = time.monotonic()
        async with s.get(d.api + "/healthz", timeout=aiohttp.ClientTimeout(total=30)) as resp:
            await resp.read()
        took = time.monotonic() - t0
        out.slowest_healthz_s = max(out.slowest_healthz_s, took)
        out.healthz_answers += 1
        await asyncio.sleep(max(0.0, HEALTHZ_EVERY_S - took))
