"""`watcher demo`: the simulated upstream, the real daemon and a verifying receiver, all on loopback.

A handful of jobs move through queued → active → retrying → success / failed (and one never exists, so it
becomes `job.missing`); every signed delivery the receiver verifies is printed; the demo stops by itself
when every job has finished and been delivered, then prints a summary.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from watcher.config import load_config
from watcher.daemon import Daemon
from watcher.daemon.logs import configure_logging
from watcher.devtools.receiver import ReceivedDelivery, Receiver
from watcher.devtools.simulate import Simulator

# (name, initial status, script of (after seconds, status[, error]))
JOBS: list[tuple[str, str, list[dict[str, Any]]]] = [
    (
        "customer.createBatch",
        "queued",
        [{"after_s": 1.0, "status": "active"}, {"after_s": 3.5, "status": "success"}],
    ),
    (
        "invoice.render",
        "queued",
        [
            {"after_s": 1.5, "status": "active"},
            {"after_s": 3.0, "status": "retrying"},
            {"after_s": 4.5, "status": "active"},
            {"after_s": 7.0, "status": "success"},
        ],
    ),
    (
        "customer.import",
        "created",
        [
            {"after_s": 0.5, "status": "queued"},
            {"after_s": 2.0, "status": "active"},
            {"after_s": 5.0, "status": "failed", "error": "row 1432: invalid e-mail address"},
        ],
    ),
    (
        "report.export",
        "active",
        [
            {"after_s": 2.0, "status": "retrying"},
            {"after_s": 3.5, "status": "active"},
            {"after_s": 4.0, "status": "retrying"},
            {"after_s": 6.0, "status": "failed", "error": "upstream storage unavailable"},
        ],
    ),
    ("contacts.dedupe", "active", [{"after_s": 2.5, "status": "success"}]),
]
TERMINAL_TYPES = {"job.success", "job.failed", "job.expired", "job.missing"}


def _config_text(base_url: str, hook_url: str, secret: str, state: Path, watchlist: Path) -> str:
    return f"""
[upstream]
base_url = "{base_url}"
token = "sim-token"
api_key = "sim-key"
workspace_slug = "sim"

[polling]
initial_interval_s = 0.25
multiplier = 1.5
max_interval_s = 1.0
jitter = 0.2
not_found_limit = 3

[api]
listen = "127.0.0.1:0"

[store]
url = "sqlite:///{state / "watcher.db"}"

[watchlist]
path = "{watchlist}"
reload_interval_s = 1.0

[daemon]
state_dir = "{state}"
shutdown_grace_s = 5.0

[log]
level = "warning"

[[webhooks]]
name = "demo"
url = "{hook_url}"
secret = "{secret}"
events = ["job.queued", "job.active", "job.retrying", "job.success", "job.failed", "job.expired",
          "job.missing"]
retry_initial_s = 0.2
retry_max_s = 2.0
"""


def _line(d: ReceivedDelivery, names: dict[str, str], started: float) -> str:
    data = d.body.get("data", {}) if isinstance(d.body, dict) else {}
    job = data.get("job") or {}
    job_id = str(job.get("id", "?"))
    prev = data.get("previous_status") or "-"
    extra = f"  error: {job['error']}" if job.get("error") else ""
    return (
        f"  {time.monotonic() - started:5.1f}s  verified {d.type:<13} {job_id[:8]}… "
        f"{names.get(job_id, '?'):<21} {prev:>8} → {job.get('status') or '-':<8}"
        f" webhook-id {d.webhook_id[:8]}…{extra}"
    )


async def _demo(timeout_s: float) -> int:
    started = time.monotonic()
    sim = Simulator(workspace_slug="sim")
    base_url = await sim.start()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    names: dict[str, str] = {}
    finished: set[str] = set()
    done = asyncio.Event()

    def on_delivery(d: ReceivedDelivery) -> None:
        print(_line(d, names, started), flush=True)
        if d.type in TERMINAL_TYPES and isinstance(d.body, dict):
            finished.add(str(d.body["data"]["job"]["id"]))
            if len(finished) >= len(names):
                done.set()

    receiver = Receiver([secret], on_delivery=on_delivery)
    hook_url = await receiver.start()
    with tempfile.TemporaryDirectory(prefix="watcher-demo-") as tmp:
        state, watchlist = Path(tmp) / "state", Path(tmp) / "watchlist.txt"
        for name, status, script in JOBS:
            job = sim.add_job(name=name, status=status, script=script)
            names[job.id] = name
        ghost = str(uuid.uuid4())
        names[ghost] = "(never created)"
        watchlist.write_text("# job ids to watch, one per line\n" + "\n".join(names) + "\n")
        config = Path(tmp) / "watcher.toml"
        config.write_text(_config_text(base_url, hook_url, secret, state, watchlist))
        settings = load_config(config, env={})
        configure_logging(settings.log.level, "console", stream=sys.stderr)
        print(f"simulated Oration API on {base_url}\nwebhook receiver on {hook_url}")
        print(f"watching {len(names)} jobs from {watchlist.name}; deliveries as they are verified:\n")
        daemon = Daemon(settings, handle_signals=False)
        run = asyncio.create_task(daemon.run())
        all_done = asyncio.ensure_future(done.wait())
        await asyncio.wait({run, all_done}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        all_done.cancel()
        daemon.request_stop()
        code = await run
        await receiver.stop()
        await sim.stop()
    polls = sum(1 for _ in sim.requests())
    print(
        f"\nsummary: {len(names)} jobs watched, {len(finished)} finished and delivered, "
        f"{len(receiver.deliveries)} deliveries verified, {receiver.rejected} rejected, "
        f"{polls} upstream polls, {time.monotonic() - started:.1f}s"
    )
    if len(finished) < len(names):
        print(f"demo: timed out after {timeout_s:.0f}s with {len(names) - len(finished)} jobs unfinished")
        return 1
    return code


def demo_main(timeout_s: float = 60.0) -> int:
    """Run the demo; 0 when every job finished and was delivered in time."""
    os.environ.pop("WATCHER_CONFIG", None)
    return asyncio.run(_demo(timeout_s))
