"""Consistent scrapes (SPEC §16): once a process's `watcher_jobs_finished_total` counts a job, the
`watcher_watched_jobs` it reports in the same scrape no longer does, although the gauges come from a store
snapshot refreshed only every second or so. Checked on SQLite and PostgreSQL, and on two PostgreSQL
replicas sharing one database, scraping every few milliseconds while jobs fail one by one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.observability.conftest import Samples, Upstream, parse_metrics, settings_for, value
from tests.support.postgres import pg_schema
from watcher.daemon import Daemon
from watcher.metrics import Metrics
from watcher.store import Store
from watcher.store.base import StoreCounts
from watcher.store.postgres import PostgresStore
from watcher.store.sqlite import SQLiteStore

JOBS = 40
FAIL_EVERY_S = 0.05  # 40 jobs over 2 s: the gauges' snapshot is refreshed about once a second


def watched_total(s: Samples) -> float:
    return sum(v for (name, _), v in s.items() if name == "watcher_watched_jobs")


def failed(s: Samples) -> float:
    return value(s, "watcher_jobs_finished_total", status="failed") or 0.0


class _Replica:
    def __init__(self, daemon: Daemon, base: str) -> None:
        self.daemon, self.base = daemon, base
        self.task = asyncio.create_task(daemon.run())

    async def scrape(self, http: aiohttp.ClientSession) -> Samples:
        async with http.get(self.base + "/metrics") as r:
            return parse_metrics(await r.text())


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A SQLite file or a fresh PostgreSQL schema."""
    if request.param == "postgres":
        async with pg_schema("scrape") as url:
            yield url
        return
    yield str(tmp_path / "scrape.db")


def _store(url: str) -> Store:
    return PostgresStore(url) if url.startswith("postgres") else SQLiteStore(Path(url))


async def _run(tmp_path: Path, upstream: Upstream, urls: list[str]) -> list[list[Samples]]:
    """Replicas on the stores at `urls` watch `JOBS` active jobs that then fail one by one; every
    replica's scrapes, taken back to back from the first full snapshot until every job is counted."""
    ids = [upstream.sim.add_job(status="active").id for _ in range(JOBS)]
    (tmp_path / "watchlist.txt").write_text("".join(f"{i}\n" for i in ids))
    replicas = []
    for n, url in enumerate(urls):
        settings = settings_for(
            tmp_path, upstream, [], polling={"initial_interval_s": 0.02, "max_interval_s": 0.05}
        )
        daemon = Daemon(settings, handle_signals=False, registry=CollectorRegistry(), store=_store(url))
        replicas.append(_Replica(daemon, f"http://127.0.0.1:{settings.api.port}"))
        assert n < 2
    scrapes: list[list[Samples]] = [[] for _ in replicas]
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                for r in replicas:
                    while watched_total(await _scrape_when_up(r, http)) != JOBS:
                        await asyncio.sleep(0.05)

            async def fail_all() -> None:
                for job in ids:
                    upstream.sim.set_status(job, "failed", error="boom")
                    await asyncio.sleep(FAIL_EVERY_S)

            failing = asyncio.create_task(fail_all())
            async with asyncio.timeout(30):
                while True:
                    for r, got in zip(replicas, scrapes, strict=True):
                        got.append(await r.scrape(http))
                    if failing.done() and sum(failed(got[-1]) for got in scrapes) == JOBS:
                        break
                    await asyncio.sleep(0.005)
            await failing
    finally:
        for r in replicas:
            r.daemon.request_stop()
        for r in replicas:
            assert await asyncio.wait_for(r.task, 20) == 0
    return scrapes


async def _scrape_when_up(r: _Replica, http: aiohttp.ClientSession) -> Samples:
    while r.daemon.state is None or not r.daemon.state.ready:
        assert not r.task.done(), "the daemon exited"
        await asyncio.sleep(0.02)
    return await r.scrape(http)


async def test_a_finished_job_is_not_watched_in_the_same_scrape(
    tmp_path: Path, upstream: Upstream, store_url: str
) -> None:
    """Every scrape: watched + failed == JOBS, exactly, while the jobs fail one by one."""
    [scrapes] = await _run(tmp_path, upstream, [store_url])
    between = [s for s in scrapes if 0 < failed(s) < JOBS]
    assert len(between) > 20, "the scrapes did not catch the jobs failing"
    bad = [(failed(s), watched_total(s)) for s in scrapes if failed(s) + watched_total(s) != JOBS]
    assert not bad, f"{len(bad)} of {len(scrapes)} scrapes disagree (failed, watched): {bad[:5]}"


async def test_replicas_on_one_database_never_double_count(tmp_path: Path, upstream: Upstream) -> None:
    """Two replicas on one PostgreSQL database: each scrape's gauge leaves out what that replica counted
    (watched + its failed <= JOBS), and in the end the gauges say 0 and the counters add up to JOBS."""
    async with pg_schema("scrape2") as url:
        scrapes = await _run(tmp_path, upstream, [url, url])
    for mine in scrapes:
        bad = [(failed(s), watched_total(s)) for s in mine if failed(s) + watched_total(s) > JOBS]
        assert not bad, f"{len(bad)} of {len(mine)} scrapes over-count (failed, watched): {bad[:5]}"
    assert sum(failed(mine[-1]) for mine in scrapes) == JOBS


def test_the_ledger_leaves_out_what_the_snapshot_had_not_seen() -> None:
    """Finishes counted after the snapshot's mark come off its gauge; the next snapshot, fixed after them,
    has them already, so they are not taken off twice."""
    m = Metrics(CollectorRegistry(), default_collectors=False)

    def scrape() -> tuple[float, float, float]:
        s = parse_metrics(generate_latest(m.registry).decode())
        return (
            value(s, "watcher_watched_jobs", status="active") or 0.0,
            value(s, "watcher_watched_jobs", status="unknown") or 0.0,
            failed(s),
        )

    m.update_counts(StoreCounts({"active": 5, "unknown": 2}, {}, {}, None), now=0.0, mark=m.finishes.mark())
    m.job_finished("failed", "active")
    m.job_finished("failed", None)  # never polled: counted as `unknown` in the snapshot
    assert scrape() == (4.0, 1.0, 2.0)
    mark = m.finishes.mark()  # the next snapshot is fixed here: it has both finishes
    m.job_finished("failed", "active")  # after the mark: not in it
    m.update_counts(StoreCounts({"active": 4, "unknown": 1}, {}, {}, None), now=1.0, mark=mark)
    assert scrape() == (3.0, 1.0, 3.0)
    m.update_counts(StoreCounts({"active": 3, "unknown": 1}, {}, {}, None), now=2.0, mark=m.finishes.mark())
    assert scrape() == (3.0, 1.0, 3.0)
