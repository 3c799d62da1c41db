"""Fixtures for the observability tests: an in-process daemon against the simulator, /metrics as numbers,
and the Debian tools (promtool, prometheus) that skip visibly, or fail when CI says they must be there."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import config
from tests.support.daemon import InProcessDaemon
from tests.support.eventually import eventually
from watcher.config import Settings
from watcher.devtools.receiver import Receiver
from watcher.devtools.simulate import Simulator

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "job-watcher.json"
SECRET = "whsec_" + base64.b64encode(b"observability-test-secret").decode()

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def require_tool(name: str) -> str:
    """The path of a Debian tool; skip with the reason when missing, fail when CI requires the tools."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not installed (Debian package prometheus; .ci/run installs it)"
        if os.environ.get("WATCHER_TEST_REQUIRE_TOOLS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def parse_metrics(text: str) -> Samples:
    """Exposition text as `{(sample name, labels): value}`."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, None when absent."""
    return samples.get((name, frozenset(labels.items())))


@dataclass
class Upstream:
    """The in-process simulator and the base URL it serves on."""

    sim: Simulator
    url: str


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """The simulated Oration API on a loopback port."""
    s = Simulator(workspace_slug="acme")
    url = await s.start()
    yield Upstream(s, url)
    await s.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A verifying webhook receiver on a loopback port."""
    r = Receiver([SECRET])
    await r.start()
    yield r
    await r.stop()


def settings_for(
    tmp_path: Path,
    upstream: Upstream,
    hooks: Iterable[Mapping[str, Any]],
    *,
    upstream_keys: Mapping[str, Any] | None = None,
    polling: Mapping[str, Any] | None = None,
) -> Settings:
    """A fast daemon config on a free port, watching `tmp_path/watchlist.txt`, SQLite in `tmp_path`."""
    return config.settings(
        tmp_path,
        upstream.url,
        webhooks=list(hooks),
        sections={
            "upstream": dict(upstream_keys or {}),
            "polling": {"max_interval_s": 0.3, "jitter": 0.1, **(polling or {})},
        },
        hook_defaults={"secret": SECRET},
    )


class RunningDaemon(InProcessDaemon):
    """A `Daemon` running in this event loop (tests/support/daemon.py), with its /metrics at hand."""

    async def metrics_text(self) -> str:
        async with aiohttp.ClientSession() as http, http.get(self.base + "/metrics") as r:
            assert r.status == 200
            return await r.text()

    async def wait_metrics(self, predicate: Callable[[Samples], bool], within_s: float = 20.0) -> Samples:
        """Scrape until `predicate` holds (bounded), return that scrape."""
        last: list[Samples] = [{}]

        async def scrape() -> Samples | None:
            last[0] = parse_metrics(await self.metrics_text())
            return last[0] if predicate(last[0]) else None

        try:
            got = await eventually(scrape, within_s, "the metrics condition")
        except AssertionError:
            interesting = {k: v for k, v in last[0].items() if k[0].startswith("watcher_")}
            msg = f"metrics condition not met in {within_s}s; last scrape: {interesting}"
            raise AssertionError(msg) from None
        assert got is not None
        return got


@pytest.fixture
async def daemons() -> AsyncIterator[Callable[[Settings], RunningDaemon]]:
    """Build in-process daemons; any still running at the end is stopped."""
    made: list[RunningDaemon] = []

    def make(settings: Settings) -> RunningDaemon:
        d = RunningDaemon(settings)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.task is not None and not d.task.done():
            await d.stop()
