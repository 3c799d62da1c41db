"""The whole pipeline as a user runs it: `watcher run` against `watcher simulate` and an independent
Standard Webhooks receiver, all subprocesses on loopback."""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import DaemonProc, Receiver, Sim, write_config
from tests.support.eventually import eventually
from tests.support.ports import free_port

pytestmark = pytest.mark.slow


def by_job(deliveries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in deliveries:
        out.setdefault(d["body"]["data"]["job"]["id"], []).append(d)
    return out


async def polled(sim: Sim, job: str, n: int) -> None:
    """Wait until the simulator has answered `n` polls of `job`."""

    async def enough() -> bool:
        return len(await sim.requests(job)) >= n

    await eventually(enough, 20, f"{n} polls of {job}")


async def test_three_jobs_two_deliveries(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any
) -> None:
    """One job fails, one succeeds, one stays active: exactly two signed deliveries with the right bodies."""
    failing = await sim.create_job(status="active", name="customer.createBatch")
    passing = await sim.create_job(status="queued", name="customer.createBatch")
    staying = await sim.create_job(status="active", name="customer.createBatch")
    (tmp_path / "watchlist.txt").write_text(
        f"# three jobs\n{failing}\n{passing} acme\n{staying}  # stays active\n"
    )
    port = free_port()
    daemon: DaemonProc = daemon_factory(write_config(tmp_path, sim, receiver, port), port)
    daemon.start()
    await daemon.wait_ready()
    for job in (failing, passing, staying):  # every job observed in its first status
        await polled(sim, job, 1)
    await sim.set_status(failing, "failed", error="quota exceeded")
    await sim.set_status(passing, "active")
    await polled(sim, passing, len(await sim.requests(passing)) + 1)  # observed active
    await sim.set_status(passing, "success")

    got = await receiver.wait_for(lambda d: len(d) >= 2, timeout=20)
    # Nothing else may arrive: the third job, still active, is polled on and makes no delivery.
    await polled(sim, staying, len(await sim.requests(staying)) + 3)
    got = receiver.deliveries()
    assert len(got) == 2, got
    jobs = by_job(got)
    assert set(jobs) == {failing, passing}
    failed = jobs[failing][0]
    assert failed["type"] == "job.failed"
    assert failed["body"]["type"] == "job.failed"
    data = failed["body"]["data"]
    assert data["job"]["status"] == "failed"
    assert data["job"]["error"] == "quota exceeded"
    assert data["job"]["name"] == "customer.createBatch"
    assert data["previous_status"] == "active"
    assert data["workspace"] == "acme"
    assert data["polls"] >= 2
    succeeded = jobs[passing][0]
    assert succeeded["type"] == "job.success"
    assert succeeded["body"]["data"]["previous_status"] == "active"
    # webhook-id is the event id: a UUID, different per event
    assert failed["id"] != succeeded["id"]
    uuid.UUID(failed["id"])
    assert daemon.stop() == 0
    events = {e.get("event") for e in daemon.log_events()}
    assert {"daemon.started", "job.transition", "job.finished", "daemon.stopped"} <= events
    assert all(
        "job_id" in e and "workspace" in e for e in daemon.log_events() if e.get("event") == "job.transition"
    )


async def test_sigkill_loses_nothing(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any
) -> None:
    """SIGKILL the daemon several times while 120 jobs finish: every terminal event arrives, duplicates
    carry the same webhook-id."""
    rng = random.Random(42)
    jobs: dict[str, str] = {}
    for _ in range(120):
        end = rng.choice(["success", "failed"])
        t1 = rng.uniform(0.2, 4.0)
        job = await sim.create_job(
            status="queued",
            script=[
                {"after_s": t1, "status": "active"},
                {"after_s": t1 + rng.uniform(0.2, 4.0), "status": end},
            ],
        )
        jobs[job] = end
    (tmp_path / "watchlist.txt").write_text("\n".join(jobs) + "\n")
    port = free_port()
    daemon: DaemonProc = daemon_factory(write_config(tmp_path, sim, receiver, port), port)
    for _ in range(4):
        daemon.start()
        await daemon.wait_ready()
        await asyncio.sleep(rng.uniform(0.8, 1.6))
        daemon.kill()
    daemon.start()
    await daemon.wait_ready()
    got = await receiver.wait_for(lambda d: len({x["body"]["data"]["job"]["id"] for x in d}) >= len(jobs), 60)
    assert daemon.stop() == 0
    got = receiver.deliveries()
    ids_by_event: dict[tuple[str, str], set[str]] = {}
    for d in got:
        ids_by_event.setdefault((d["body"]["data"]["job"]["id"], d["type"]), set()).add(d["id"])
    assert {job: f"job.{end}" for job, end in jobs.items()} == dict(ids_by_event.keys())
    assert all(len(ids) == 1 for ids in ids_by_event.values()), "a duplicate carried a different webhook-id"
    assert daemon.starts == 5


async def test_receiver_outage_then_recovery(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any
) -> None:
    """The receiver answers 503 for a while (its circuit breaker opens), then recovers: everything arrives."""
    await receiver.set_status(503)
    jobs = [await sim.create_job(status="active") for _ in range(10)]
    (tmp_path / "watchlist.txt").write_text("\n".join(jobs) + "\n")
    port = free_port()
    daemon: DaemonProc = daemon_factory(write_config(tmp_path, sim, receiver, port), port)
    daemon.start()
    await daemon.wait_ready()
    for job in jobs:
        await polled(sim, job, 1)
    for job in jobs:
        await sim.set_status(job, "success")

    async def refused_and_open() -> bool:  # the counters, not a sleep
        async with aiohttp.ClientSession() as s, s.get(daemon.api + "/metrics") as r:
            text = await r.text()
        retries = 'watcher_webhook_deliveries_total{outcome="retry",webhook="ops"} '
        is_open = 'watcher_webhook_endpoint_open{webhook="ops"} 1'
        # `breaker_failures` (5) refused attempts open the endpoint's breaker: no attempts are spent then.
        return is_open in text and any(
            x.startswith(retries) and float(x.split()[-1]) >= 5 for x in text.splitlines()
        )

    await eventually(refused_and_open, 20, "refused attempts, then the breaker open")
    assert receiver.deliveries() == []  # nothing was accepted while the receiver failed
    await receiver.set_status(200)
    # The breaker's probe goes out within `breaker_open_s` (10 s); its success sends what waited.
    got = await receiver.wait_for(lambda d: len({x["id"] for x in d}) >= len(jobs), 40)
    assert {d["body"]["data"]["job"]["id"] for d in got} == set(jobs)
    assert daemon.stop() == 0


async def test_unreliable_upstream(tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any) -> None:
    """20 % 5xx, 10 % 429, 10 % garbage and slow answers: every job resolves and the daemon stays up."""
    await sim.faults(server_error=0.2, rate_limit=0.1, retry_after_s=0.2, garbage=0.1, slow=0.05, slow_s=0.5)
    jobs = {}
    for i in range(30):
        end = "failed" if i % 3 == 0 else "success"
        jobs[await sim.create_job(status="queued", script=[{"after_s": 0.5 + i * 0.05, "status": end}])] = end
    (tmp_path / "watchlist.txt").write_text("\n".join(jobs) + "\n")
    port = free_port()
    config = write_config(tmp_path, sim, receiver, port, upstream={"timeout_s": 0.3})
    daemon: DaemonProc = daemon_factory(config, port)
    daemon.start()
    await daemon.wait_ready()
    got = await receiver.wait_for(lambda d: len({x["id"] for x in d}) >= len(jobs), 60)
    assert {d["body"]["data"]["job"]["id"]: d["type"] for d in got} == {
        j: f"job.{e}" for j, e in jobs.items()
    }
    assert daemon.alive()
    async with aiohttp.ClientSession() as s, s.get(daemon.api + "/metrics") as r:
        text = await r.text()
    for outcome in ("server_error", "rate_limited", "invalid_response", "timeout"):
        line = next(
            x for x in text.splitlines() if x.startswith(f'watcher_polls_total{{outcome="{outcome}"}}')
        )
        assert float(line.split()[-1]) > 0, line
    assert daemon.stop() == 0


async def _poll_rate(sim: Sim, seconds: float) -> float:
    before = len(await sim.requests())
    await asyncio.sleep(seconds)
    return (len(await sim.requests()) - before) / seconds


async def test_rate_limits_slow_the_poll_rate(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any
) -> None:
    """429s with Retry-After visibly slow every poll to that upstream (the shared token bucket)."""
    jobs = [await sim.create_job(status="active") for _ in range(40)]
    (tmp_path / "watchlist.txt").write_text("\n".join(jobs) + "\n")
    port = free_port()
    config = write_config(
        tmp_path,
        sim,
        receiver,
        port,
        polling={"initial_interval_s": 0.05, "max_interval_s": 0.05},
        upstream={"rate_limit_per_s": 400.0},
    )
    daemon: DaemonProc = daemon_factory(config, port)
    daemon.start()
    await daemon.wait_ready()

    async def served(fault: str, n: int) -> bool:
        stats = await sim.call("GET", "/_sim/stats")
        return int(stats["by_fault"].get(fault, 0)) >= n

    await eventually(lambda: served("none", 2 * len(jobs)), 15, "every job polled, twice on average")
    healthy = await _poll_rate(sim, 2.0)
    await sim.faults(rate_limit=0.1, retry_after_s=0.5)
    await eventually(lambda: served("rate_limit", 10), 15, "ten 429 answers")  # the bucket slowed down
    limited = await _poll_rate(sim, 2.0)
    assert healthy > 100, healthy
    assert limited < healthy * 0.5, (healthy, limited)
    assert daemon.stop() == 0


async def test_intervals_seen_by_upstream(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any
) -> None:
    """Intervals grow to max_interval_s with jitter, stop after a terminal status; 404s end in job.missing."""
    job = await sim.create_job(status="active")
    ghost = str(uuid.uuid4())  # never created upstream
    (tmp_path / "watchlist.txt").write_text(f"{job}\n{ghost}\n")
    port = free_port()
    polling = {
        "initial_interval_s": 0.05,
        "multiplier": 2.0,
        "max_interval_s": 0.4,
        "jitter": 0.2,
        "not_found_limit": 4,
    }
    daemon: DaemonProc = daemon_factory(write_config(tmp_path, sim, receiver, port, polling=polling), port)
    daemon.start()
    await daemon.wait_ready()
    await polled(sim, job, 10)  # 0.05, 0.1, 0.2, then 0.4 s (max_interval_s) from the fourth gap on
    await sim.set_status(job, "success")
    await receiver.wait_for(lambda d: len(d) >= 2, 10)
    finished_at = time.time()
    # A job added now is polled three times within the time the finished one would have been polled again.
    sentinel = await sim.create_job(status="active")
    (tmp_path / "watchlist.txt").write_text(f"{job}\n{ghost}\n{sentinel}\n")
    await polled(sim, sentinel, 3)
    reqs = sorted(await sim.requests(job), key=lambda r: r["started_at"])
    starts = [r["started_at"] for r in reqs]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(gaps) >= 9
    tail = gaps[-4:-1]  # the last ones before the terminal poll: max_interval_s with jitter, never sooner
    # Never sooner than the jittered interval allows; later only by the machine's load (a generous bound).
    assert all(0.4 * 0.8 - 0.01 <= g <= 0.4 * 1.2 + 1.0 for g in tail), tail
    assert sum(gaps[:2]) / 2 < sum(tail) / 3, "the intervals grow from initial_interval_s"
    assert len({round(g, 3) for g in tail}) > 1, "no jitter"
    assert max(starts) < finished_at, "polled after the terminal status"
    ghost_reqs = await sim.requests(ghost)
    assert len(ghost_reqs) == 4
    types = {d["body"]["data"]["job"]["id"]: d["type"] for d in receiver.deliveries()}
    assert types == {job: "job.success", ghost: "job.missing"}
    assert daemon.stop() == 0


async def test_sigterm_exits_zero_and_sighup_reloads(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any
) -> None:
    """SIGHUP re-reads the watch list at once; SIGTERM drains and exits 0."""
    first = await sim.create_job(status="active")
    later = await sim.create_job(status="success")
    (tmp_path / "watchlist.txt").write_text(f"{first}\nnot-a-uuid\n")
    port = free_port()
    config = write_config(tmp_path, sim, receiver, port, reload_interval_s=3600)
    daemon: DaemonProc = daemon_factory(config, port)
    daemon.start()
    await daemon.wait_ready()

    def bad_lines() -> list[int]:
        return [e["line"] for e in daemon.log_events() if e.get("event") == "watchlist.bad_line"]

    # Ready does not mean the watch list was read: the start-up reload runs beside the other loops. Rewrite
    # the file only once it has been read, or the first read may already see the new file (no bad line).
    assert await eventually(bad_lines, 20, "the start-up reload reporting bad line 2") == [2]
    (tmp_path / "watchlist.txt").write_text(f"{first}\n{later}\n")
    daemon.signal(signal.SIGHUP)
    got = await receiver.wait_for(lambda d: len(d) >= 1, 10)
    assert got[0]["body"]["data"]["job"]["id"] == later
    assert got[0]["body"]["data"]["previous_status"] is None
    assert daemon.stop() == 0
    assert bad_lines() == [2]  # the reload forced by SIGHUP read the new file, without the bad line
