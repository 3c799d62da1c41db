"""deploy/systemd: the unit passes `systemd-analyze verify`, is hardened, and its environment suffices.

systemd is not PID 1 here, so the unit cannot be started for real; the last test runs `watcher` with exactly
the environment the unit gives it (CONFIGURATION_DIRECTORY, STATE_DIRECTORY, the EnvironmentFile's
variables, NOTIFY_SOCKET, WATCHDOG_USEC from WatchdogSec=) and no -c.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, NotifySocket, require_tool
from tests.e2e.conftest import SIM_KEY, SIM_TOKEN, WEBHOOK_SECRET, Receiver, Sim
from tests.support.ports import free_port
from watcher.config import load_config
from watcher.config.model import DaemonConfig

UNIT = DEPLOY / "systemd" / "job-watcher.service"
DROPIN = DEPLOY / "systemd" / "job-watcher.service.d" / "credentials.conf"
EXAMPLE_TOML = DEPLOY / "systemd" / "watcher.toml"
EXAMPLE_ENV = DEPLOY / "systemd" / "watcher.env"
INSTALLED_BINARY = "/opt/job-watcher/bin/watcher"


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file (keys may repeat), section names dropped, comments skipped."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def seconds(value: str) -> float:
    """A systemd time span like `30s`, `2min` or `1min 30s` in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value))


def unit_for_this_machine(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart names this venv's `watcher` (verify insists that it exists)."""
    watcher_bin = Path(sys.executable).with_name("watcher")
    assert watcher_bin.exists()
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(watcher_bin)))
    return copy


def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a single warning."""
    tool = require_tool("systemd-analyze")
    result = subprocess.run(
        [tool, "verify", str(unit_for_this_machine(tmp_path))], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "job-watcher" not in result.stdout + result.stderr, result.stderr


def test_security_exposure_is_low(tmp_path: Path) -> None:
    """`systemd-analyze security` rates the unit's exposure at most 2.0 (of 10; "OK")."""
    tool = require_tool("systemd-analyze")
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= 2.0, result.stdout


def test_unit_has_the_required_settings() -> None:
    """Type=notify with a watchdog, hardening, directories, restart policy and SIGHUP reload are all there."""
    s = unit_settings(UNIT)
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "DynamicUser": "yes",
        "StateDirectory": "job-watcher",
        "ConfigurationDirectory": "job-watcher",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "MemoryDenyWriteExecute": "yes",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "ExecStart": f"{INSTALLED_BINARY} run",
    }
    assert {k: s.get(k, ["<missing>"])[-1] for k in expected} == expected
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "@system-service" in s["SystemCallFilter"]
    assert seconds(s["WatchdogSec"][0]) >= 10


def test_stop_timeout_outlasts_the_grace() -> None:
    """TimeoutStopSec exceeds the grace of the example config and the default, so no stop ends in SIGKILL."""
    timeout = seconds(unit_settings(UNIT)["TimeoutStopSec"][0])
    example_grace = tomllib.loads(EXAMPLE_TOML.read_text())["daemon"]["shutdown_grace_s"]
    default_grace = DaemonConfig.model_fields["shutdown_grace_s"].default
    assert timeout >= example_grace + 10
    assert timeout >= default_grace + 10


def test_dropin_points_at_the_configured_credential() -> None:
    """The credential the drop-in loads is the file the example config's secret_file names."""
    loaded = [v.split(":", 1)[0] for v in unit_settings(DROPIN)["LoadCredential"]]
    assert f'secret_file = "/run/credentials/{UNIT.name}/{loaded[0]}"' in EXAMPLE_TOML.read_text()


def _env_file(path: Path, overrides: dict[str, str]) -> dict[str, str]:
    """KEY=value lines the way systemd's EnvironmentFile= reads them, values replaced from `overrides`."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = overrides.get(key.strip(), value)
    return env


def _spawn_run(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`watcher run` without -c, as systemd would start it, logging to `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "watcher", "run"], env=env, stdout=log, stderr=log)


async def test_the_units_environment_is_enough(
    tmp_path: Path, sim: Sim, receiver: Receiver, notify_socket: NotifySocket
) -> None:
    """With the unit's environment and no -c, check-config and run find the config and the state directory."""
    etc, state, creds = tmp_path / "etc" / "job-watcher", tmp_path / "var-lib-job-watcher", tmp_path / "creds"
    for d in (etc, state, creds):
        d.mkdir(parents=True)
    job = await sim.create_job(status="failed", error="boom")
    (etc / "watchlist.txt").write_text(f"{job}\n")
    (creds / "ops-webhook-secret").write_text(WEBHOOK_SECRET + "\n")
    port = free_port()
    toml = (
        EXAMPLE_TOML.read_text()
        .replace("https://www.oration.ai/api/v2", sim.base_url)
        .replace('workspace_slug = "acme"', 'workspace_slug = "acme"\ntimeout_s = 2.0')
        .replace("https://ops.example.com/hooks/job-watcher", receiver.url)
        .replace("/etc/job-watcher/", f"{etc}/")
        .replace(f"/run/credentials/{UNIT.name}/", f"{creds}/")
        .replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    )
    (etc / "watcher.toml").write_text(
        toml + '\n[polling]\ninitial_interval_s = 0.1\n\n[log]\nformat = "json"\n'
    )
    watchdog_usec = int(seconds(unit_settings(UNIT)["WatchdogSec"][0]) * 1e6)
    env = {
        "PATH": "/usr/bin:/bin",
        "CONFIGURATION_DIRECTORY": str(etc),
        "STATE_DIRECTORY": str(state),
        "NOTIFY_SOCKET": notify_socket.address,
        "WATCHDOG_USEC": str(watchdog_usec),
        **_env_file(
            EXAMPLE_ENV, {"WATCHER_UPSTREAM__TOKEN": SIM_TOKEN, "WATCHER_UPSTREAM__API_KEY": SIM_KEY}
        ),
    }
    check = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "watcher", "check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert f'state_dir = "{state}"' in check.stdout
    assert f'url = "sqlite:///{state}/watcher.db"' in check.stdout
    assert SIM_TOKEN not in check.stdout and WEBHOOK_SECRET not in check.stdout

    proc = _spawn_run(env, tmp_path / "daemon.log")
    try:
        await notify_socket.wait_for(lambda n: n.fields.get("READY") == "1", 30)
        got = await receiver.wait_for(lambda d: len(d) >= 1, 20)
        assert got[0]["type"] == "job.failed"
        assert (state / "watcher.db").exists()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    await notify_socket.wait_for(lambda n: n.fields.get("STOPPING") == "1", 5)


@pytest.mark.parametrize("variable", ["WATCHER_CONFIG", "CONFIGURATION_DIRECTORY"])
def test_config_location_precedence(tmp_path: Path, variable: str) -> None:
    """-c beats $WATCHER_CONFIG, which beats $CONFIGURATION_DIRECTORY/watcher.toml."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "watcher.toml").write_text(
            f'[upstream]\ntoken = "t"\napi_key = "k"\nworkspace_slug = "{name}"\n'
        )
    env = {"CONFIGURATION_DIRECTORY": str(tmp_path / "a")}
    if variable == "WATCHER_CONFIG":
        env["WATCHER_CONFIG"] = str(tmp_path / "b" / "watcher.toml")
        assert load_config(None, env).upstream.workspace_slug == "b"
    else:
        assert load_config(None, env).upstream.workspace_slug == "a"
    assert load_config(tmp_path / "b" / "watcher.toml", env).upstream.workspace_slug == "b"
