"""`watcher bench` cannot rot: each scenario runs tiny and reports every figure (no timed assertions here)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.support.eventually import eventually
from tests.support.postgres import PG_URL, require_postgres
from watcher.bench import SCENARIOS, selected
from watcher.bench.report import ScenarioResult, render_table
from watcher.bench.throughput import GatedLoop
from watcher.devtools.simulate import Simulator

HEADERS = {"Authorization": "Bearer sim-token", "x-api-key": "sim-key", "x-workspace-slug": "sim"}


def bench(tmp_path: Path, *args: str, timeout: float = 110.0) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run `watcher bench --quick … --json` as a user would; returns the process and the JSON it wrote."""
    out = tmp_path / "bench.json"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "watcher", "bench", "--quick", "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp_path,
    )
    return proc, json.loads(out.read_text()) if out.exists() else None


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_each_scenario_runs_and_reports_every_figure(tmp_path: Path, scenario: str) -> None:
    """A tiny run finishes, prints the table and writes JSON with a number for every figure."""
    args = [scenario, "--workdir", str(tmp_path / "work")]
    if scenario == "scale":
        args += ["--sizes", "500,1000", "--window-s", "1"]
    if scenario == "soak":
        args += ["--duration-s", "15"]
    proc, doc = bench(tmp_path, *args)
    if scenario == "replicas":  # on the default SQLite store: skipped, visibly, and that is no failure
        assert proc.returncode == 0, proc.stderr[-2000:]
        (result,) = doc["scenarios"]
        assert result["skipped"] and "--store postgresql://" in result["skipped"]
        assert not result["figures"] and result["error"] is None
        assert "SKIP" in proc.stdout and "replicas: skipped: needs a PostgreSQL store" in proc.stdout
        return
    # Targets may fail at toy sizes on a busy machine; the run itself must not.
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert doc is not None, proc.stderr[-2000:]
    (result,) = doc["scenarios"]
    assert result["scenario"] == scenario
    assert result["error"] is None, result["error"]
    assert result["figures"], "a scenario reports figures"
    for fig in result["figures"]:
        assert isinstance(fig["value"], int | float), fig
        assert fig["name"] in proc.stdout
    checked = any(f["passed"] is not None for f in result["figures"])
    assert checked == (scenario != "upstream-calls"), (
        "SPEC §9 targets are checked; upstream-calls only reports"
    )
    assert doc["machine"]["cores"] and doc["command"].startswith("watcher bench --quick")
    assert "scenario" in proc.stdout.splitlines()[0]


def test_a_full_run_leaves_out_the_soak_unless_asked() -> None:
    """`watcher bench` alone runs every scenario but the ten-minute soak; naming it runs it."""
    assert "soak" in SCENARIOS and "soak" not in selected([])
    assert selected([]) == [s for s in SCENARIOS if s != "soak"]
    assert selected(["soak", "throughput"]) == ["throughput", "soak"]


def test_bad_usage_is_one_line_and_status_2(tmp_path: Path) -> None:
    """An unknown scenario or a bad option is named on one line, nothing runs."""
    bad = (["nosuch"], ["--window-s", "0"], ["--sizes", "ten"], ["--store", "mysql://db/x"])
    bad += (["--duration-s", "0"],)
    for args in bad:
        proc, doc = bench(tmp_path, *args, timeout=30.0)
        assert proc.returncode == 2
        assert doc is None
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("watcher bench: error:"), proc.stderr


async def _schemas_left(names: list[str]) -> list[str]:
    conn = await asyncpg.connect(PG_URL, timeout=10)
    try:
        rows = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname = any($1::text[])", names)
    finally:
        await conn.close()
    return [r["nspname"] for r in rows]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(240)
@pytest.mark.parametrize("scenario", ["replicas", "throughput", "scale"])
async def test_store_postgres_runs_in_fresh_schemas_dropped_afterwards(tmp_path: Path, scenario: str) -> None:
    """`--store postgresql://…`: the scenario runs in schemas of its own, which are gone afterwards."""
    await require_postgres()
    args = [scenario, "--store", PG_URL, "--workdir", str(tmp_path / "w")]
    if scenario == "scale":
        args += ["--sizes", "500,1000", "--window-s", "1"]
    proc, doc = bench(tmp_path, *args, timeout=200.0)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert doc is not None, proc.stderr[-2000:]
    (result,) = doc["scenarios"]
    assert result["error"] is None and result["skipped"] is None, result
    assert all(isinstance(f["value"], int | float) for f in result["figures"]), result["figures"]
    names = {f["name"] for f in result["figures"]}
    if scenario == "replicas":
        assert {"1 replica", "3 replicas, together", "takeover after SIGKILL, max"} <= names
        held = next(
            f["value"] for f in result["figures"] if f["name"] == "watches held by the killed replica"
        )
        assert held >= 1
    if scenario == "scale":  # the claims of both sizes, taking turns, carry the SPEC §9 target
        (turns,) = [f for f in result["figures"] if "taking turns" in f["name"]]
        assert turns["name"].startswith("claims per second saturated, 1,000 / 500") and turns["value"] > 0
        assert turns["passed"] is not None
    store = doc["store"]
    assert store["kind"] == "postgresql" and "@" not in store["where"] and store["server_version"]
    assert store["schemas"] and all(s.startswith("watcher_bench_") for s in store["schemas"])
    assert await _schemas_left(store["schemas"]) == []


def test_unreachable_postgres_is_one_line_and_status_1(tmp_path: Path) -> None:
    """A `--store` database that does not answer stops the run before any scenario, naming where it is."""
    proc, doc = bench(
        tmp_path, "replicas", "--store", "postgresql://u:hunter2@127.0.0.1:9/nodb", timeout=30.0
    )
    assert proc.returncode == 1 and doc is None
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to PostgreSQL at 127.0.0.1:9/nodb" in lines[0], proc.stderr
    assert "hunter2" not in proc.stderr


def test_table_marks_pass_fail_and_unfinished_scenarios() -> None:
    """The table shows each target with PASS or FAIL, and a scenario that could not finish as ERROR."""
    ok = ScenarioResult("throughput")
    ok.add("ratio", 0.9, at_least=0.8)
    ok.add("p99", 80.5, "ms", at_most=50.0)
    ok.add("size", 1_000_000)
    broken = ScenarioResult("register", error="daemon not ready within 300s")
    skipped = ScenarioResult("replicas", skipped="needs a PostgreSQL store")
    table = render_table([ok, broken, skipped])
    assert "0.9" in table and ">= 0.8" in table and "PASS" in table
    assert "80.5 ms" in table and "< 50 ms" in table and "FAIL" in table
    assert "1,000,000" in table
    assert "ERROR" in table and "register: error: daemon not ready within 300s" in table
    assert "SKIP" in table and "replicas: skipped: needs a PostgreSQL store" in table
    assert not ok.passed and not broken.passed and skipped.passed


async def test_simulator_answers_unknown_ids_only_when_asked() -> None:
    """`unknown_jobs` makes any UUID an unchanging job; by default an unknown id stays a 404."""
    for mode, expected in ((None, 404), ("active", 200)):
        sim = Simulator(unknown_jobs=mode)
        base = await sim.start()
        try:
            job = str(uuid.uuid4())
            async with aiohttp.ClientSession(headers=HEADERS) as s:
                async with s.get(f"{base}/jobs/{job}") as resp:
                    assert resp.status == expected
                    if expected == 200:
                        body = await resp.json()
                        assert body["id"] == job and body["status"] == "active"
                        assert body["workspaceId"] == sim.workspace_id("sim")
                async with s.get(f"{base}/jobs/not-a-uuid") as resp:
                    assert resp.status == 404
        finally:
            await sim.stop()
    with pytest.raises(ValueError, match="unknown_jobs"):
        Simulator(unknown_jobs="paused")


async def test_the_bare_loop_sends_only_while_its_gate_is_open() -> None:
    """The throughput baseline: no request while its gate is closed, requests while it is open, and once
    `close` returns nothing is in flight and nothing more goes out (the daemon's slice follows at once)."""
    sim = Simulator(unknown_jobs="active")
    base = await sim.start()
    loop = GatedLoop(base, [str(uuid.uuid4()) for _ in range(20)], 4)
    task = asyncio.ensure_future(loop.run())
    try:
        await asyncio.sleep(0.2)
        assert sim.stats()["requests"] == 0, "closed at first"
        for _ in range(2):
            before = sim.stats()["requests"]
            loop.open()
            await eventually(lambda b=before: sim.stats()["requests"] >= b + 50, 15, "requests while open")
            await loop.close()
            closed_at = sim.stats()
            assert closed_at["inflight"] == 0
            await asyncio.sleep(0.2)
            assert sim.stats()["requests"] == closed_at["requests"], "a request after the gate closed"
    finally:
        await loop.stop()
        await asyncio.wait_for(task, 10)
        await sim.stop()
    assert loop.failed == 0


def _descendants(pid: int) -> set[int]:
    """Every living process below `pid`, from /proc's children lists."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = Path(f"/proc/{p}/task").iterdir()
            kids = {int(k) for t in tasks for k in (t / "children").read_text().split()}
        except OSError:
            continue
        todo.extend(kids - found)
        found |= kids
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_stops_the_run_and_every_process_it_started(tmp_path: Path, sig: signal.Signals) -> None:
    """A bench killed with SIGTERM (a CI timeout) or SIGHUP (its terminal gone) leaves no daemon,
    simulator or sink behind."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "watcher", "bench", "--quick", "soak", "--duration-s", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        children: set[int] = set()
        deadline = time.monotonic() + 60
        while len(children) < 3 and time.monotonic() < deadline:  # the daemon, the simulator, the sink
            time.sleep(0.2)
            children = _descendants(proc.pid)
        assert len(children) >= 3, "the soak started its processes"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "stopped; no figures" in err and "Traceback" not in err
    left = {pid for pid in children if Path(f"/proc/{pid}").exists()}
    assert not left, f"still running after the bench stopped: {left}"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_an_observed_store_has_every_watch_seen(tmp_path: Path, kind: str) -> None:
    """`build_store(observed=True)` in several batches leaves every watch seen `active` once, and due
    before `now`, on both stores. On a shared PostgreSQL store it once saw only the first batch (the others
    were registered at the database's clock, due after the seen ones), so `scale` at a million watches
    timed first observations."""
    from tests.support.postgres import pg_schema
    from watcher.bench.harness import build_store
    from watcher.store import open_store

    ids = [str(uuid.UUID(int=n, version=4)) for n in range(1, 351)]
    now = time.time()

    async def check(url: str) -> None:
        await build_store(url, ids, now, batch=100, observed=True)
        store = open_store(url)
        await store.open()
        try:
            # Every watch is overdue, so a restore (as a daemon's start-up) takes each one.
            assert await store.restore(now, lambda _w: now - 1.0) == len(ids)
            due = await store.claim_due(now, 1_000, 60.0)
        finally:
            await store.close()
        assert sorted(w.job_id for w in due) == sorted(ids)
        assert {(w.status, w.polls) for w in due} == {("active", 1)}

    if kind == "sqlite":
        await check(f"sqlite:///{tmp_path / 'observed.db'}")
    else:
        async with pg_schema("observed") as url:
            await check(url)
