"""`watcher watches …` and `watcher deliveries …` as subprocesses against a running daemon."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from tests.api.conftest import Running, StartDaemon
from tests.support.eventually import eventually
from tests.support.ports import free_port

TOKEN = "client-test-token"


async def watcher(d: Running, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `python -m watcher ARGS` with `-c` naming the daemon's config; returns (code, stdout, stderr)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcher",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**base, "WATCHER_CONFIG": str(d.watchlist.parent / "w.toml"), **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_client_commands_against_a_running_daemon(start_daemon: StartDaemon) -> None:
    """add, list, show, rm and deliveries list/retry print tables, or JSON with --json; token from config."""
    d = await start_daemon(token=TOKEN)
    d.receiver.set_status(500)
    job = d.sim.add_job(status="failed", error="row 7").id
    code, out, err = await watcher(
        d, "watches", "add", job.upper(), "--label", "team=billing", "--webhook", "ops"
    )
    assert (code, err) == (0, "")
    assert out.strip() == f"watching {job} (workspace acme, state unknown)"
    code, out, _ = await watcher(d, "watches", "add", job)
    assert code == 0 and out.startswith(f"already watched {job}")
    code, out, _ = await watcher(d, "watches", "list", "--label", "team=billing")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["JOB", "STATE", "WORKSPACE", "POLLS", "REGISTERED", "LABELS"]
    assert row.startswith(job) and row.endswith("team=billing")

    async def dead() -> bool:
        code, out, _ = await watcher(d, "deliveries", "list", "--state", "dead", "--json")
        return code == 0 and len(json.loads(out)["deliveries"]) == 1

    await eventually(dead, timeout=30)
    code, out, _ = await watcher(d, "watches", "show", job)
    assert code == 0
    assert "state:       failed" in out and "job.failed" in out and "dead" in out
    code, out, _ = await watcher(d, "deliveries", "list", "--json")
    (delivery,) = json.loads(out)["deliveries"]
    d.receiver.set_status(None)
    code, out, _ = await watcher(d, "deliveries", "retry", str(delivery["id"]))
    assert code == 0
    assert out.strip() == (
        f"delivery {delivery['id']} is pending again (webhook ops, webhook-id {delivery['event_id']})"
    )
    code, out, err = await watcher(d, "deliveries", "retry", "999")
    assert (code, out) == (1, "")
    assert err.strip() == "watcher: 404 Not Found: no delivery 999"
    code, out, _ = await watcher(d, "watches", "rm", job)
    assert (code, out.strip()) == (0, f"stopped watching {job}")
    code, _, err = await watcher(d, "watches", "rm", job)
    assert code == 1 and err.strip() == f"watcher: 404 Not Found: job {job} is not watched"


async def test_client_errors_and_overrides(start_daemon: StartDaemon) -> None:
    """Usage errors exit 2; a wrong token or no daemon exit 1 with one line; --url/--token override."""
    d = await start_daemon(token=TOKEN)
    for args in (
        ["watches"],
        ["watches", "add"],
        ["watches", "add", "x", "--label", "novalue"],
        ["deliveries", "retry", "x"],
    ):
        code, _, err = await watcher(d, *args)
        assert code == 2, args
        assert "Traceback" not in err
    code, _, err = await watcher(d, "watches", "list", env={"WATCHER_API_TOKEN": "wrong"})
    assert code == 1
    assert err.strip().startswith("watcher: 401 Unauthorized: missing or wrong bearer token")
    code, out, _ = await watcher(d, "watches", "list", "--json", "--url", d.base, "--token", TOKEN, "-c", "")
    assert code == 0 and json.loads(out) == {"watches": [], "next_cursor": None}
    code, _, err = await watcher(d, "watches", "add", "not-a-uuid")
    assert code == 1 and err.strip().startswith(
        "watcher: 400 Bad Request: job_id: String should match pattern"
    )
    nobody = f"http://127.0.0.1:{free_port()}"
    code, _, err = await watcher(d, "watches", "list", "--url", nobody, "--timeout", "2")
    assert (
        code == 1
        and err.startswith(f"watcher: cannot reach the daemon at {nobody}")
        and len(err.splitlines()) == 1
    )
    code, _, err = await watcher(d, "watches", "list", "--url", "ftp://x")
    assert code == 2


async def test_client_refuses_what_http_cannot_carry(start_daemon: StartDaemon) -> None:
    """A token or URL with a control character or a space is a usage error in one line that repeats
    neither (http.client refuses them with a ValueError that quotes the token)."""
    d = await start_daemon(token=TOKEN)
    for flags in (["--token", "sEcReT\nInjected: 1"], ["--url", d.base + "/sEcReT x"]):
        code, _, err = await watcher(d, "watches", "list", *flags)
        assert code == 2, err
        assert len(err.splitlines()) == 1 and "Traceback" not in err and "sEcReT" not in err, err
