"""The `watcher` command as a user meets it: exit codes, error lines, and secrets that never show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import (
    SIM_KEY,
    SIM_TOKEN,
    WEBHOOK_SECRET,
    DaemonProc,
    Receiver,
    Sim,
    write_config,
)
from tests.support.ports import free_port


def watcher(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd or Path.cwd())}
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd
    )


def test_bad_config_names_every_bad_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        "[upstream]\n"
        'token = "t0ps3cret-value"\napi_key = "k3y-s3cret-value"\nworkspace_slug = "acme"\ntimeout_s = -1\n'
        "[polling]\njitter = 3\n"
        "[[webhooks]]\n"
        'name = "ops"\nurl = "ftp://example.invalid/hook"\n'
        'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\n'
        'format = "xml"\n'
    )
    for command in ("check-config", "run"):
        result = watcher(command, "-c", str(cfg), cwd=tmp_path)
        assert result.returncode == 2, result
        out = result.stdout + result.stderr
        for key in ("upstream.timeout_s:", "polling.jitter:", "webhooks[0].url:", "webhooks[0].format:"):
            assert key in out, (key, out)
        assert "Traceback" not in out
        assert "t0ps3cret-value" not in out and "k3y-s3cret-value" not in out


def test_missing_file_and_syntax_error_exit_2(tmp_path: Path) -> None:
    result = watcher("check-config", "-c", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.toml" in result.stderr and "Traceback" not in result.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[upstream\ntoken = 1\n")
    result = watcher("check-config", "-c", str(broken), cwd=tmp_path)
    assert result.returncode == 2
    assert "broken.toml" in result.stderr and "Traceback" not in result.stderr


def test_unknown_command_is_usage_error() -> None:
    assert watcher("frobnicate").returncode == 2


def test_check_config_masks_secrets(tmp_path: Path, sim: Sim, receiver: Receiver) -> None:
    cfg = write_config(tmp_path, sim, receiver, free_port())
    result = watcher("check-config", "-c", str(cfg), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for secret in (SIM_TOKEN, SIM_KEY, WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_")):
        assert secret not in result.stdout
    assert "********" in result.stdout
    assert sim.base_url in result.stdout


def test_non_loopback_without_tokens_is_refused(tmp_path: Path, sim: Sim, receiver: Receiver) -> None:
    cfg = write_config(tmp_path, sim, receiver, free_port())
    cfg.write_text(cfg.read_text().replace('listen = "127.0.0.1:', 'listen = "0.0.0.0:'))
    result = watcher("run", "-c", str(cfg), cwd=tmp_path)
    assert result.returncode == 2
    assert "api.tokens" in result.stderr and "Traceback" not in result.stderr


async def test_secrets_never_logged(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: object
) -> None:
    """A full run with jobs, deliveries and upstream errors: no secret in any log line."""
    job = await sim.create_job(status="success")
    (tmp_path / "watchlist.txt").write_text(f"{job}\n")
    await sim.faults(server_error=0.3)
    port = free_port()
    cfg = write_config(tmp_path, sim, receiver, port)
    cfg.write_text(cfg.read_text().replace('level = "info"', 'level = "debug"'))
    daemon: DaemonProc = daemon_factory(cfg, port)  # type: ignore[operator]
    daemon.start()
    await daemon.wait_ready()
    await receiver.wait_for(lambda d: len(d) >= 1, 20)
    assert daemon.stop() == 0
    text = daemon.log_text()
    assert "job.transition" in text
    for secret in (SIM_TOKEN, SIM_KEY, WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_")):
        assert secret not in text


def test_check_config_warns_about_event_types_it_does_not_know(tmp_path: Path) -> None:
    """A webhook asking for job.paused loads (the upstream may grow it, SPEC §2) with a warning line."""
    cfg = tmp_path / "grown.toml"
    cfg.write_text(
        '[upstream]\ntoken = "t"\napi_key = "k"\nworkspace_slug = "acme"\n'
        'terminal_statuses = ["success", "failed", "cancelled"]\n'
        '[[webhooks]]\nname = "ops"\nurl = "https://ops.example/hook"\n'
        'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\n'
        'events = ["job.failed", "job.cancelled", "job.paused"]\n'
    )
    result = watcher("check-config", "-c", str(cfg), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "webhooks[0].events: job.paused" in warnings[0], result.stderr
    assert 'terminal_statuses = ["success", "failed", "cancelled"]' in result.stdout
