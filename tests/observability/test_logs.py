"""Upstream errors are logged once per burst with what was suppressed; an outage does not flood the log."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from structlog.testing import capture_logs

from tests.observability.conftest import RunningDaemon, Upstream, settings_for, value
from watcher.config import Settings
from watcher.devtools.clock import ManualClock
from watcher.devtools.receiver import Receiver
from watcher.devtools.simulate import Faults
from watcher.models import PollOutcome, PollResult, Source, Watch
from watcher.polling.errorlog import ErrorLogLimiter


def _watch(job_id: str, workspace: str) -> Watch:
    return Watch(job_id=job_id, workspace=workspace, sources=Source.FILE, registered_at=0.0)


async def test_one_line_per_burst_and_kind_then_the_suppressed_count() -> None:
    """Per workspace and outcome: the first error, then nothing for 10 s, then a line with the count."""
    clock = ManualClock()
    limiter = ErrorLogLimiter(clock, window_s=10.0)
    boom = PollResult(PollOutcome.SERVER_ERROR, status_code=503, detail="HTTP 503")
    denied = PollResult(PollOutcome.CLIENT_ERROR, status_code=401, detail="HTTP 401")
    with capture_logs() as logs:
        for i in range(50):
            limiter.error(_watch(f"job-{i}", "acme"), boom)
        limiter.error(_watch("job-x", "acme"), denied)
        limiter.error(_watch("job-y", "other"), boom)
        limiter.settle()  # the window is still open: nothing to report
        await clock.advance(10.5)
        limiter.error(_watch("job-z", "acme"), boom)  # a new window: logged, with the count
        await clock.advance(10.5)
        limiter.error(_watch("job-z", "acme"), boom)
        limiter.error(_watch("job-z", "acme"), boom)
        await clock.advance(10.5)
        limiter.settle()  # the burst is over: the last two suppressed are reported
    lines = [(e["event"], e["workspace"], e["reason"], e["suppressed"]) for e in logs]
    assert lines == [
        ("upstream.error", "acme", "server_error", 0),
        ("upstream.error", "acme", "client_error", 0),
        ("upstream.error", "other", "server_error", 0),
        ("upstream.error", "acme", "server_error", 49),
        ("upstream.error", "acme", "server_error", 0),
        ("upstream.error_burst_end", "acme", "server_error", 1),
    ]
    first = logs[0]
    assert first["job_id"] == "job-0"
    assert (first["status_code"], first["detail"], first["log_level"]) == (503, "HTTP 503", "warning")


async def test_an_outage_is_counted_in_full_but_logged_in_a_few_lines(
    tmp_path: Path, upstream: Upstream, receiver: Receiver, daemons: Callable[[Settings], RunningDaemon]
) -> None:
    """Every poll fails for a while: hundreds of failed polls counted, a handful of log lines."""
    ids = [upstream.sim.add_job(status="active").id for _ in range(20)]
    (tmp_path / "watchlist.txt").write_text("".join(f"{i}\n" for i in ids))
    upstream.sim.faults = Faults(server_error=1.0)
    d = daemons(
        settings_for(
            tmp_path,
            upstream,
            [{"name": "ops", "url": receiver.url}],
            polling={"error_backoff_max_s": 0.1},
        )
    )
    with capture_logs() as logs:
        await d.start()
        s = await d.wait_metrics(
            lambda s: (value(s, "watcher_polls_total", outcome="server_error") or 0) >= 200
        )
        upstream.sim.faults = Faults()
        s = await d.wait_metrics(lambda s: (value(s, "watcher_polls_total", outcome="ok") or 0) >= 20)
        assert await d.stop() == 0
    errors = [e for e in logs if e["event"].startswith("upstream.error")]
    assert 1 <= len(errors) <= 3, errors  # one per 10 s window, the test lasts a few seconds
    assert errors[0]["reason"] == "server_error"
    assert (value(s, "watcher_polls_total", outcome="server_error") or 0) >= 200
