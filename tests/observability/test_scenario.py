"""Exact metric values and log lines after a scripted scenario with the real daemon against the simulator,
and again after a restart: the store-derived gauges come back from the store, the counters start at 0."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from tests.observability.conftest import SECRET, RunningDaemon, Samples, Upstream, settings_for, value
from tests.support.ports import free_port
from watcher.config import Settings
from watcher.devtools.receiver import Receiver

Daemons = Callable[[Settings], RunningDaemon]

# Three webhooks: `ops` works, `gone` refuses connections with one attempt allowed (dead at once), `later`
# refuses them and retries only minutes later (pending for the rest of the test).
_CLOSED = "http://127.0.0.1:{port}/hook"


def _hooks(receiver: Receiver) -> list[dict[str, Any]]:
    return [
        {"name": "ops", "url": receiver.url, "retry_initial_s": 0.05, "retry_max_s": 0.2},
        {"name": "gone", "url": _CLOSED.format(port=free_port()), "max_attempts": 1},
        {
            "name": "later",
            "url": _CLOSED.format(port=free_port()),
            "retry_initial_s": 300.0,
            "retry_max_s": 300.0,
        },
    ]


def start_ten(up: Upstream, tmp_path: Path) -> list[str]:
    """Six active and four queued jobs upstream, all in the watch-list file."""
    ids = [up.sim.add_job(status="active").id for _ in range(6)]
    ids += [up.sim.add_job(status="queued").id for _ in range(4)]
    (tmp_path / "watchlist.txt").write_text("".join(f"{i}\n" for i in ids))
    return ids


def finish_four(up: Upstream, ids: list[str]) -> None:
    """Three of the active jobs fail and one succeeds."""
    for job in ids[:3]:
        up.sim.set_status(job, "failed", error="row 7: bad e-mail")
    up.sim.set_status(ids[3], "success")


def watched(s: Samples, status: str) -> float | None:
    """`watcher_watched_jobs{status}`."""
    return value(s, "watcher_watched_jobs", status=status)


def four_finished_and_delivered(s: Samples) -> bool:
    """Everything of `finish_four` is counted, delivered or given up, and the gauges were refreshed."""
    return (
        value(s, "watcher_webhook_deliveries_total", webhook="ops", outcome="success") == 4
        and value(s, "watcher_webhook_deliveries_total", webhook="gone", outcome="dead") == 4
        and value(s, "watcher_webhook_deliveries_total", webhook="later", outcome="retry") == 4
        and watched(s, "active") == 2
        and value(s, "watcher_webhook_dead", webhook="gone") == 4
        and value(s, "watcher_webhook_pending", webhook="later") == 4
    )


def by_label(s: Samples, name: str, label: str) -> dict[str, float]:
    """Every sample of `name` keyed by one label's value."""
    return {dict(k[1])[label]: v for k, v in s.items() if k[0] == name}


async def test_exact_metrics_after_scenario_and_restart(
    tmp_path: Path, upstream: Upstream, receiver: Receiver, daemons: Daemons
) -> None:
    """6 active + 4 queued; 3 fail, 1 succeeds: every figure is exact, and the gauges survive a restart."""
    settings = settings_for(tmp_path, upstream, _hooks(receiver))
    ids = start_ten(upstream, tmp_path)
    first = daemons(settings)
    with capture_logs() as logs:
        await first.start()
        s = await first.wait_metrics(lambda s: watched(s, "active") == 6 and watched(s, "queued") == 4)
        assert by_label(s, "watcher_watched_jobs", "status") == {
            "unknown": 0, "created": 0, "queued": 4, "active": 6, "retrying": 0, "other": 0,
        }  # fmt: skip
        finish_four(upstream, ids)
        s = await first.wait_metrics(four_finished_and_delivered)
        assert await first.stop() == 0

    assert by_label(s, "watcher_watched_jobs", "status") == {
        "unknown": 0, "created": 0, "queued": 4, "active": 2, "retrying": 0, "other": 0,
    }  # fmt: skip
    assert by_label(s, "watcher_jobs_finished_total", "status") == {
        "success": 1, "failed": 3, "expired": 0, "missing": 0, "other": 0,
    }  # fmt: skip
    assert by_label(s, "watcher_transitions_total", "status") == {
        "created": 0, "queued": 4, "active": 6, "success": 1, "failed": 3, "retrying": 0, "other": 0,
    }  # fmt: skip
    deliveries = {
        (dict(k[1])["webhook"], dict(k[1])["outcome"]): v
        for k, v in s.items()
        if k[0] == "watcher_webhook_deliveries_total"
    }
    assert deliveries == {
        ("ops", "success"): 4, ("ops", "retry"): 0, ("ops", "dead"): 0,
        ("gone", "success"): 0, ("gone", "retry"): 0, ("gone", "dead"): 4,
        ("later", "success"): 0, ("later", "retry"): 4, ("later", "dead"): 0,
    }  # fmt: skip
    assert by_label(s, "watcher_webhook_pending", "webhook") == {"ops": 0, "gone": 0, "later": 4}
    assert by_label(s, "watcher_webhook_dead", "webhook") == {"ops": 0, "gone": 4, "later": 0}
    assert 0 < (value(s, "watcher_outbox_oldest_age_seconds") or 0) < 60
    polls = by_label(s, "watcher_polls_total", "outcome")
    assert polls["ok"] >= 10
    assert {k: v for k, v in polls.items() if k != "ok"} == dict.fromkeys(
        ("not_found", "rate_limited", "client_error", "server_error", "timeout", "network_error",
         "invalid_response"), 0,
    )  # fmt: skip
    assert value(s, "watcher_poll_duration_seconds_count") == polls["ok"]
    assert value(s, "watcher_detection_lag_seconds_count") == 14  # one per transition
    assert value(s, "watcher_notify_lag_seconds_count") == 4  # one per first successful delivery
    for hook in ("ops", "gone", "later"):
        assert value(s, "watcher_webhook_delivery_duration_seconds_count", webhook=hook) == 4
    assert value(s, "watcher_ready") == 1
    assert value(s, "process_resident_memory_bytes")
    assert len(receiver.deliveries) == 4
    _assert_log_keys(logs)

    # A restart: a fresh process (registry) on the same store.
    second = daemons(settings)
    await second.start()
    s = await second.wait_metrics(lambda s: watched(s, "active") is not None)
    assert by_label(s, "watcher_watched_jobs", "status") == {
        "unknown": 0, "created": 0, "queued": 4, "active": 2, "retrying": 0, "other": 0,
    }  # fmt: skip
    assert by_label(s, "watcher_webhook_pending", "webhook") == {"ops": 0, "gone": 0, "later": 4}
    assert by_label(s, "watcher_webhook_dead", "webhook") == {"ops": 0, "gone": 4, "later": 0}
    assert 0 < (value(s, "watcher_outbox_oldest_age_seconds") or 0) < 60
    for name in (
        "watcher_jobs_finished_total",
        "watcher_transitions_total",
        "watcher_webhook_deliveries_total",
    ):
        assert {k: v for k, v in s.items() if k[0] == name and v != 0} == {}, name
    assert await second.stop() == 0


def _assert_log_keys(logs: list[MutableMapping[str, Any]]) -> None:
    """One line per transition and per delivery outcome, each with the documented keys; no secret."""
    transitions = [e for e in logs if e["event"] == "job.transition"]
    assert len(transitions) == 14
    for e in transitions:
        assert {"job_id", "workspace", "status", "previous_status", "event_id"} <= e.keys()
    assert {(e["previous_status"], e["status"]) for e in transitions} == {
        (None, "active"), (None, "queued"), ("active", "failed"), ("active", "success"),
    }  # fmt: skip
    delivery = [e for e in logs if e["event"].startswith("delivery.")]
    assert (
        sorted(e["event"] for e in delivery)
        == ["delivery.dead"] * 4 + ["delivery.retry"] * 4 + ["delivery.success"] * 4
    )
    for e in delivery:
        assert {"job_id", "workspace", "event_id", "webhook", "attempt", "reason"} <= e.keys()
        assert e["attempt"] == 1
    assert all(e["reason"] for e in delivery if e["event"] != "delivery.success")
    finished = [e for e in logs if e["event"] == "job.finished"]
    assert sorted(e["status"] for e in finished) == ["failed", "failed", "failed", "success"]
    text = repr(logs)
    assert SECRET not in text
    assert "sim-key" not in text
    assert "sim-token" not in text


async def test_polls_due_is_the_scheduler_backlog(
    tmp_path: Path, upstream: Upstream, receiver: Receiver, daemons: Daemons
) -> None:
    """With one poll per 5 s allowed, 12 due jobs leave exactly 11 due polls after the first one."""
    ids = [upstream.sim.add_job(status="active").id for _ in range(12)]
    (tmp_path / "watchlist.txt").write_text("".join(f"{i}\n" for i in ids))
    settings = settings_for(
        tmp_path,
        upstream,
        [{"name": "ops", "url": receiver.url}],
        upstream_keys={"rate_limit_per_s": 0.2, "max_concurrency": 4},
        polling={"initial_interval_s": 60.0, "max_interval_s": 60.0},
    )
    d = daemons(settings)
    await d.start()
    # Four are claimed (one polled, three waiting for a token, then one more), seven wait in the store:
    # both kinds are due and not started.
    s = await d.wait_metrics(
        lambda s: value(s, "watcher_polls_total", outcome="ok") == 1 and value(s, "watcher_polls_due") == 11,
        within_s=4.0,
    )
    assert value(s, "watcher_polls_due") == 11
    assert await d.stop() == 0
