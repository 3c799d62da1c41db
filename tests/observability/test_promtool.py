"""promtool on what we ship: the rules file, its unit tests, and a live /metrics of the running daemon."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.observability.conftest import (
    ALERTS,
    ALERTS_TEST,
    RunningDaemon,
    Upstream,
    require_tool,
    settings_for,
    value,
)
from watcher.config import Settings
from watcher.devtools.receiver import Receiver


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool, bounded in time."""
    return subprocess.run(
        [require_tool("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_alert_rules_pass_promtool_check_rules() -> None:
    """`promtool check rules` accepts deploy/prometheus/alerts.yml."""
    r = promtool("check", "rules", str(ALERTS))
    assert r.returncode == 0, r.stdout + r.stderr
    rules = sum(len(g["rules"]) for g in yaml.safe_load(ALERTS.read_text())["groups"])
    assert rules >= 10
    assert f"SUCCESS: {rules} rules found" in r.stdout


def test_alert_rules_unit_tests_pass() -> None:
    """Every alert fires on the synthetic series of alerts_test.yml, and only when it should."""
    r = promtool("test", "rules", str(ALERTS_TEST))
    assert r.returncode == 0, r.stdout + r.stderr


async def test_live_metrics_pass_promtool_check_metrics(
    tmp_path: Path, upstream: Upstream, receiver: Receiver, daemons: Callable[[Settings], RunningDaemon]
) -> None:
    """A /metrics with observations in every histogram passes `promtool check metrics` without a lint."""
    job = upstream.sim.add_job(status="active").id
    (tmp_path / "watchlist.txt").write_text(job + "\n")
    d = daemons(settings_for(tmp_path, upstream, [{"name": "ops", "url": receiver.url}]))
    await d.start()
    await d.wait_metrics(lambda s: value(s, "watcher_polls_total", outcome="ok") is not None)
    upstream.sim.set_status(job, "success")
    await d.wait_metrics(
        lambda s: value(s, "watcher_webhook_deliveries_total", webhook="ops", outcome="success") == 1
    )
    text = await d.metrics_text()
    assert await d.stop() == 0
    r = await asyncio.to_thread(promtool, "check", "metrics", stdin=text)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")
