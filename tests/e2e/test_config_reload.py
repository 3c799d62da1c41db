"""SIGHUP reloads the configuration of `watcher run` (issue 15 item 5): one signal re-reads the file and the
watch list; a bad file leaves the daemon serving its running configuration, logged and counted.

The daemon, the simulator and the receiver are subprocesses on loopback; the signal is a real SIGHUP.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.conftest import SIM_KEY, SIM_SLUG, SIM_TOKEN, WEBHOOK_SECRET, Receiver, Sim
from tests.support import config
from tests.support.eventually import eventually
from tests.support.ports import free_port

TOKEN_A, TOKEN_B = "e2e-token-a-0123456789", "e2e-token-b-0123456789"
LEAKY = "e2e-token-never-logged-0123"


def write(tmp_path: Path, sim: Sim, receiver: Receiver, port: int, tokens: list[str], **extra: Any) -> Path:
    """The daemon's file: these tokens, webhook `ops` to the receiver, a watch list reloaded only by SIGHUP
    (its interval is an hour)."""
    state = tmp_path / "state"
    sections: dict[str, Any] = {
        "upstream": {"token": SIM_TOKEN, "api_key": SIM_KEY, "workspace_slug": SIM_SLUG},
        "api": {"tokens": tokens},
        "store": {"url": f"sqlite:///{state / 'watcher.db'}"},
        "daemon": {"state_dir": str(state), "shutdown_grace_s": 5.0},
        "log": {"level": "info", "format": "json"},
        "watchlist": {"reload_interval_s": 3600.0},
        **extra,
    }
    hook = {"name": "ops", "url": receiver.url, "secret": WEBHOOK_SECRET, "events": ["job.failed"]}
    return config.write_config(
        tmp_path, sim.base_url, port=port, webhooks=[hook], sections=sections, name="watcher.toml"
    )


async def status_of(api: str, path: str, token: str) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.get(api + path, headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status


async def metric(api: str, name: str) -> float | None:
    async with aiohttp.ClientSession() as s, s.get(api + "/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def test_sighup_reloads_tokens_and_the_watch_list_and_survives_a_bad_file(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any
) -> None:
    port = free_port()
    path = write(tmp_path, sim, receiver, port, [TOKEN_A])
    watchlist = tmp_path / "watchlist.txt"
    watchlist.write_text("")
    d = daemon_factory(path, port)
    d.start()
    await d.wait_ready()
    assert await status_of(d.api, "/v1/watches", TOKEN_A) == 200
    assert await status_of(d.api, "/v1/watches", TOKEN_B) == 401

    # One SIGHUP: a new token, a restart-only change, and a job added to the watch list.
    job = await sim.create_job(status="failed", error="boom")
    watchlist.write_text(job + "\n")
    write(tmp_path, sim, receiver, port, [TOKEN_B], polling={"initial_interval_s": 0.1})
    d.signal(signal.SIGHUP)
    await eventually(lambda: _events(d, "config.reloaded"), 15, "config.reloaded")
    assert await status_of(d.api, "/v1/watches", TOKEN_B) == 200
    assert await status_of(d.api, "/v1/watches", TOKEN_A) == 401
    [warning] = _events(d, "config.restart_required")
    assert warning["key"] == "polling.initial_interval_s" and warning["level"] == "warning"
    # The watch list was re-read by the same signal (its own interval is an hour): the job is watched and
    # its failure delivered.
    [got] = await receiver.wait_for(lambda got: len(got) >= 1, 20)
    assert (got["type"], got["body"]["data"]["job"]["id"]) == ("job.failed", job)
    assert await status_of(d.api, f"/v1/watches/{job}", TOKEN_B) == 200

    # A file with an unknown key (and a token that must never be logged): nothing of it applies.
    path.write_text(path.read_text().replace("[api]\n", f'[api]\ntokenz = ["{LEAKY}"]\n', 1))
    d.signal(signal.SIGHUP)
    await eventually(lambda: _events(d, "config.reload_failed"), 15, "config.reload_failed")
    [failed] = _events(d, "config.reload_failed")
    assert failed["level"] == "error"
    assert failed["problems"] == ["api.tokenz: unknown key"]
    assert d.alive()
    assert await status_of(d.api, "/v1/watches", TOKEN_B) == 200
    assert await metric(d.api, 'watcher_config_reloads_total{result="failed"}') == 1.0
    assert await metric(d.api, 'watcher_config_reloads_total{result="ok"}') == 1.0
    assert await metric(d.api, "watcher_config_last_reload_successful") == 0.0
    log = d.log_text()
    assert "Traceback" not in log and LEAKY not in log
    assert d.stop() == 0


def _events(d: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in d.log_events() if e.get("event") == name]
