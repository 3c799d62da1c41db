"""A watch-list file written in place, in parts, while `watcher run` reloads it (issue 14): no job it
still lists is unwatched and re-added, so none gets a new `registered_at` or a second `active` transition."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.conftest import DaemonProc, Receiver, Sim, free_port, write_config

pytestmark = pytest.mark.slow

JOBS = 60
CHUNK = 400  # bytes per write: a 60-line list takes six writes
GAP_S = 0.1  # between writes; the reload interval is 0.2 s, so reloads see the file half-written


async def _write_in_parts(path: Path, text: str) -> None:
    with path.open("r+", encoding="utf-8") as f:
        f.truncate(0)
        f.flush()
        for start in range(0, len(text), CHUNK):
            await asyncio.sleep(GAP_S)
            f.write(text[start : start + CHUNK])
            f.flush()


async def _active_transitions(http: aiohttp.ClientSession, api: str) -> float:
    async with http.get(api + "/metrics") as r:
        text = await r.text()
    match = re.search(r'^watcher_transitions_total\{status="active"\} (\S+)$', text, re.M)
    return float(match[1]) if match else 0.0


async def test_a_list_written_in_parts_keeps_every_watch(
    tmp_path: Path, sim: Sim, receiver: Receiver
) -> None:
    """Three in-place rewrites of the same 60 ids, each in six parts: no removal, same registered_at."""
    port = free_port()
    config = write_config(
        tmp_path, sim, receiver, port, polling={"initial_interval_s": 0.2, "max_interval_s": 1}
    )
    jobs = [await sim.create_job(status="active", name="customer.createBatch") for _ in range(JOBS)]
    text = "".join(f"{j}\n" for j in jobs)
    listfile = tmp_path / "watchlist.txt"
    listfile.write_text(text)
    daemon = DaemonProc(config, tmp_path / "daemon.log", port)
    daemon.start()
    try:
        await daemon.wait_ready()
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(20):
                while await _active_transitions(http, daemon.api) < JOBS:
                    await asyncio.sleep(0.1)
            before = {}
            for job in jobs:
                async with http.get(f"{daemon.api}/v1/watches/{job}") as r:
                    before[job] = (await r.json())["registered_at"]
            for _ in range(3):
                await _write_in_parts(listfile, text)
            await asyncio.sleep(1.5)  # settled: removals, if any were due, are applied by now
            after = {}
            for job in jobs:
                async with http.get(f"{daemon.api}/v1/watches/{job}") as r:
                    assert r.status == 200, job
                    after[job] = (await r.json())["registered_at"]
            assert after == before
            assert await _active_transitions(http, daemon.api) == JOBS
    finally:
        assert daemon.stop() == 0
    reloads = [e for e in daemon.log_events() if e["event"] == "watchlist.reloaded"]
    assert len(reloads) > 3, "the reloader saw the file change"
    assert any("removals_waiting" in e for e in reloads), "some reload saw the file half-written"
    assert all(e["removed"] == 0 for e in reloads), [e for e in reloads if e["removed"]]
