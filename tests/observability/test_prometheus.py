"""A real Prometheus server on loopback scrapes the daemon and evaluates the expressions of the alert rules
and the Grafana dashboard over its HTTP API, with the values the scripted scenario must produce."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.observability.conftest import (
    ALERTS,
    DASHBOARD,
    ROOT,
    RunningDaemon,
    Upstream,
    require_tool,
    settings_for,
)
from tests.observability.test_scenario import finish_four, start_ten, watched
from tests.support.ports import free_port
from watcher.config import Settings
from watcher.devtools.receiver import Receiver

Vector = dict[frozenset[tuple[str, str]], float]


class Prometheus:
    """A `prometheus` subprocess with its own config and storage under a temp dir, on a loopback port."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "job-watcher", "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.args = [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    async def get(self, http: aiohttp.ClientSession, path: str, **params: str) -> Any:
        async with http.get(self.url + path, params=params) as r:
            body = await r.json()
            assert r.status == 200 and body["status"] == "success", body
            return body["data"]

    async def query(self, http: aiohttp.ClientSession, expr: str) -> Vector:
        """An instant query as `{labels: value}`."""
        data = await self.get(http, "/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return {frozenset(r["metric"].items()): float(r["value"][1]) for r in data["result"]}

    async def wait(
        self, http: aiohttp.ClientSession, expr: str, ok: Callable[[Vector], bool], within_s: float = 30.0
    ) -> Vector:
        """Query until `ok` holds (bounded in time)."""
        got: Vector = {}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                while True:
                    with contextlib.suppress(aiohttp.ClientError, AssertionError):
                        got = await self.query(http, expr)
                        if ok(got):
                            return got
                    assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
                    await asyncio.sleep(0.25)
        raise AssertionError(f"{expr!r} never satisfied the condition in {within_s}s; last: {got}")


@pytest.fixture
async def prometheus_for(tmp_path: Path) -> AsyncIterator[Callable[[str], Prometheus]]:
    """Start Prometheus servers scraping a target; each is stopped at the end."""
    binary = require_tool("prometheus")
    made: list[Prometheus] = []

    def make(target: str) -> Prometheus:
        p = Prometheus(binary, tmp_path, target)
        made.append(p)
        p.start()
        return p

    yield make
    for p in made:
        p.stop()


def dashboard_exprs() -> dict[str, list[str]]:
    """Every panel's PromQL by panel title, with Grafana's variables replaced by what Prometheus accepts."""
    dash = json.loads(DASHBOARD.read_text())
    out: dict[str, list[str]] = {}
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"].replace("$instance", ".*").replace("$__rate_interval", "1m")
            out.setdefault(panel["title"], []).append(expr)
    return out


def alert_exprs() -> dict[str, str]:
    """Each alert's expression by alert name."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"]}


def one(v: Vector) -> float:
    """The value of a vector with exactly one element."""
    assert len(v) == 1, v
    return next(iter(v.values()))


async def test_prometheus_evaluates_alert_and_dashboard_expressions(
    tmp_path: Path,
    upstream: Upstream,
    receiver: Receiver,
    daemons: Callable[[Settings], RunningDaemon],
    prometheus_for: Callable[[str], Prometheus],
) -> None:
    """Queue depth 2 active + 4 queued, failure rate 3/4; the failure-rate alert is pending, no other is."""
    settings = settings_for(tmp_path, upstream, [{"name": "ops", "url": receiver.url}])
    ids = start_ten(upstream, tmp_path)
    d = daemons(settings)
    await d.start()
    await d.wait_metrics(lambda s: watched(s, "active") == 6 and watched(s, "queued") == 4)
    prom = prometheus_for(f"127.0.0.1:{settings.api.port}")
    panels, alerts = dashboard_exprs(), alert_exprs()
    async with aiohttp.ClientSession() as http:
        # The counters must be scraped at 0 before the jobs finish, as in production.
        await prom.wait(http, 'watcher_watched_jobs{status="active"}', lambda v: one(v) == 6, within_s=60)
        await prom.wait(http, "sum(watcher_jobs_finished_total)", lambda v: one(v) == 0)
        finish_four(upstream, ids)
        await prom.wait(http, "sum(watcher_jobs_finished_total)", lambda v: v != {} and one(v) == 4)
        await prom.wait(http, 'max(watcher_watched_jobs{status="active"})', lambda v: one(v) == 2)

        (depth,) = panels["Queue depth by status"]
        assert {dict(k)["status"]: v for k, v in (await prom.query(http, depth)).items()} == {
            "unknown": 0, "created": 0, "queued": 4, "active": 2, "retrying": 0, "other": 0,
        }  # fmt: skip
        assert one(await prom.query(http, panels["Watched jobs"][0])) == 6
        (failure_rate,) = panels["Job failure rate (15m)"]
        assert one(await prom.query(http, failure_rate)) == pytest.approx(0.75)
        assert one(await prom.query(http, panels["Dead deliveries"][0])) == 0
        assert one(await prom.query(http, panels["Ready"][0])) == 1
        for exprs in panels.values():
            for expr in exprs:
                await prom.query(http, expr)  # every panel's query is valid PromQL on real data

        # The alert expressions themselves: only the failure rate is above its threshold.
        assert one(await prom.query(http, alerts["JobWatcherJobFailureRateHigh"])) == pytest.approx(0.75)
        for name, expr in alerts.items():
            if name != "JobWatcherJobFailureRateHigh":
                assert await prom.query(http, expr) == {}, name

        # And Prometheus's rule evaluation agrees: pending (it has `for: 5m`), every rule healthy.
        async with asyncio.timeout(30):
            while True:
                data = await prom.get(http, "/api/v1/rules")
                rules = {r["name"]: r for g in data["groups"] for r in g["rules"]}
                if rules["JobWatcherJobFailureRateHigh"]["state"] == "pending":
                    break
                await asyncio.sleep(0.5)
        assert set(rules) == set(alerts)
        assert {n: r["health"] for n, r in rules.items()} == dict.fromkeys(alerts, "ok")
        assert {
            n: r["state"] for n, r in rules.items() if n != "JobWatcherJobFailureRateHigh"
        } == dict.fromkeys(set(alerts) - {"JobWatcherJobFailureRateHigh"}, "inactive")
        if os.environ.get("WATCHER_RENDER_DOCS_IMG") == "1":
            await _screenshot(prom.url, depth, failure_rate)
    assert await d.stop() == 0


async def _screenshot(prom_url: str, *exprs: str) -> None:
    """Render Prometheus's own graph page of `exprs` to docs/img/ with headless chromium (docs only)."""
    from urllib.parse import urlencode

    params: dict[str, str] = {}
    for i, expr in enumerate(exprs):
        flat = " ".join(expr.split())
        tab = "0" if i == 0 else "1"  # the first as a graph, the others as their current value
        params |= {f"g{i}.expr": flat, f"g{i}.tab": tab, f"g{i}.range_input": "20s", f"g{i}.stacked": "0"}
    out = ROOT / "docs" / "img" / "prometheus-queue-depth-and-failure-rate.png"
    args = [
        require_tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--screenshot={out}", "--window-size=1200,1160", "--virtual-time-budget=8000",
        f"{prom_url}/graph?{urlencode(params)}",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    async with asyncio.timeout(60):
        assert await proc.wait() == 0
