"""Adaptive polling end to end (SPEC §12): `watcher run` against `watcher simulate`, time compressed.

A job type with tight durations is learnt from its first finished jobs; the next jobs of that type are
polled where they finish, so the simulator counts visibly fewer requests per job, while the detection lag
stays within the target. A job that runs far past its type's `slow_quantile` is reported once as `job.slow`.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import DaemonProc, Receiver, Sim, write_config
from tests.support.eventually import eventually
from tests.support.ports import free_port
from watcher.clock import parse_timestamp

pytestmark = pytest.mark.slow

TYPE = "render.thumbnail"
LAG_TARGET_S = 0.5
MIN_SAMPLES = 10
PER_PHASE = 14
ADAPTIVE = {
    "strategy": "adaptive",
    "adaptive_lag_target_s": LAG_TARGET_S,
    "adaptive_min_samples": MIN_SAMPLES,
    "adaptive_min_interval_s": 0.05,
    "adaptive_max_interval_s": 30.0,
}


async def api(daemon: DaemonProc, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, daemon.api + path, json=body) as r:
        return r.status, await r.json() if r.content_type.endswith("json") else await r.text()


async def run_jobs(
    sim: Sim, daemon: DaemonProc, rng: random.Random, n: int, lo: float, hi: float
) -> list[str]:
    """Create `n` jobs of TYPE lasting U(lo, hi) seconds, watch them, wait until all have finished."""
    ids = []
    for _ in range(n):
        job = await sim.create_job(
            status="active", name=TYPE, script=[{"after_s": rng.uniform(lo, hi), "status": "success"}]
        )
        status, _ = await api(daemon, "POST", "/v1/watches", {"job_id": job})
        assert status == 201
        ids.append(job)

    async def finished() -> bool:
        _, page = await api(daemon, "GET", "/v1/watches?status=success&limit=1000")
        return set(ids) <= {w["job_id"] for w in page["watches"]}

    await eventually(finished, 20 + hi, f"{n} jobs of {hi:g}s finished")
    return ids


def lag_of(delivery: dict[str, Any]) -> float:
    """Detection lag of a delivered transition: detected_at - the job's updatedAt."""
    data = delivery["body"]["data"]
    detected, updated = parse_timestamp(data["detected_at"]), parse_timestamp(data["job"]["updatedAt"])
    assert detected is not None and updated is not None
    return detected - updated


async def test_a_learnt_type_costs_fewer_polls_at_the_target_lag(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any
) -> None:
    """Once learnt, a tight type's jobs cost well under the backoff curve's polls, lag within the target."""
    port = free_port()
    config = write_config(tmp_path, sim, receiver, port, polling=ADAPTIVE, watchlist=False)
    daemon: DaemonProc = daemon_factory(config, port)
    daemon.start()
    await daemon.wait_ready()
    rng = random.Random(5)
    learning = await run_jobs(sim, daemon, rng, PER_PHASE, 2.0, 2.3)

    async def learnt() -> bool:
        _, body = await api(daemon, "GET", "/v1/job-types")
        return any(t["name"] == TYPE and t["samples"] >= MIN_SAMPLES for t in body["items"])

    await eventually(learnt, 10, "the type learnt")
    await asyncio.sleep(2.5)  # the learner's next round recomputes the type's schedule
    learnt_ids = await run_jobs(sim, daemon, rng, PER_PHASE, 2.0, 2.3)

    async def calls(ids: list[str]) -> float:
        return sum([len(await sim.requests(j)) for j in ids]) / len(ids)

    before, after = await calls(learning), await calls(learnt_ids)
    assert after <= 0.6 * before, (before, after)
    await receiver.wait_for(lambda d: len({x["id"] for x in d}) >= 2 * PER_PHASE, timeout=10)
    delivered = {
        d["body"]["data"]["job"]["id"]: d for d in receiver.deliveries() if d["type"] == "job.success"
    }
    lags = sorted(lag_of(delivered[j]) for j in learnt_ids)
    # Within the target for (nearly) all of them; the bound is generous for a loaded machine.
    assert lags[len(lags) // 2] <= LAG_TARGET_S, lags
    assert lags[-2] <= 2 * LAG_TARGET_S, lags
    _, body = await api(daemon, "GET", "/v1/job-types")
    (row,) = [t for t in body["items"] if t["name"] == TYPE]
    assert row["workspace"] == "acme"
    assert row["samples"] == 2 * PER_PHASE
    assert 1.8 <= row["p50_s"] <= 2.5
    assert daemon.stop() == 0


async def test_job_slow_is_delivered_once_per_slow_job(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any
) -> None:
    """A job far past its type's p99 gets one `job.slow`, to the webhooks whose events include it."""
    port = free_port()
    events = ["job.success", "job.slow"]
    polling = {"adaptive_min_samples": MIN_SAMPLES}  # strategy: the default, backoff
    config = write_config(
        tmp_path, sim, receiver, port, polling=polling, webhook={"events": events}, watchlist=False
    )
    daemon: DaemonProc = daemon_factory(config, port)
    daemon.start()
    await daemon.wait_ready()
    rng = random.Random(6)
    await run_jobs(sim, daemon, rng, MIN_SAMPLES + 2, 0.3, 0.5)
    await asyncio.sleep(1.5)  # the learner's next round sets the type's slow threshold
    slow = await run_jobs(sim, daemon, rng, 2, 3.0, 3.0)
    await receiver.wait_for(lambda d: sum(x["type"] == "job.slow" for x in d) >= 2, timeout=10)
    await asyncio.sleep(0.5)  # nothing more may come
    got = receiver.deliveries()
    slow_events = [d for d in got if d["type"] == "job.slow"]
    assert sorted(d["body"]["data"]["job"]["id"] for d in slow_events) == sorted(slow)
    for d in slow_events:
        data = d["body"]["data"]
        assert data["age_s"] >= data["slow_after_s"] > 0.2
        assert data["job"]["status"] == "active"
    async with aiohttp.ClientSession() as s, s.get(daemon.api + "/metrics") as r:
        text = await r.text()
    assert "watcher_jobs_slow_total 2.0" in text
    # Not a transition: job.success of every job is still delivered, in order after job.slow.
    assert sum(d["type"] == "job.success" for d in got) == MIN_SAMPLES + 4
    for job in slow:
        order = [d["type"] for d in got if d["body"]["data"]["job"]["id"] == job]
        assert order == ["job.slow", "job.success"], order
    assert daemon.stop() == 0
    slow_lines = [e for e in daemon.log_events() if e.get("event") == "job.slow"]
    assert sorted(e["job_id"] for e in slow_lines) == sorted(slow)


async def test_a_restart_keeps_the_model_and_job_slow_stays_one_event(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any
) -> None:
    """The learnt model survives a restart (the store), and a slow job flagged before it is not flagged
    again after it: the event id is the job's, so the second detection is the same event, stored once."""
    port = free_port()
    polling = {"adaptive_min_samples": MIN_SAMPLES}
    config = write_config(
        tmp_path, sim, receiver, port, polling=polling, webhook={"events": ["job.slow"]}, watchlist=False
    )
    daemon: DaemonProc = daemon_factory(config, port)
    daemon.start()
    await daemon.wait_ready()
    rng = random.Random(8)
    await run_jobs(sim, daemon, rng, MIN_SAMPLES + 2, 0.3, 0.5)
    await asyncio.sleep(1.5)  # the learner's next round sets the type's slow threshold
    slow = await sim.create_job(status="active", name=TYPE, script=[{"after_s": 6.0, "status": "success"}])
    status, _ = await api(daemon, "POST", "/v1/watches", {"job_id": slow})
    assert status == 201
    await receiver.wait_for(lambda d: len(d) >= 1, timeout=10)
    assert daemon.stop() == 0  # the learner's last flush writes what it learnt since its last one
    daemon.start()
    await daemon.wait_ready()

    async def relearnt() -> bool:
        _, body = await api(daemon, "GET", "/v1/job-types")
        return any(t["name"] == TYPE and t["samples"] == MIN_SAMPLES + 2 for t in body["items"])

    await eventually(relearnt, 10, "the model loaded from the store")

    async def finished() -> bool:
        _, watch = await api(daemon, "GET", f"/v1/watches/{slow}")
        return bool(watch["status"] == "success")

    await eventually(finished, 15, "the slow job finished")
    await asyncio.sleep(0.5)  # nothing more may come
    assert [(d["type"], d["body"]["data"]["job"]["id"]) for d in receiver.deliveries()] == [
        ("job.slow", slow)
    ]
    async with aiohttp.ClientSession() as s, s.get(daemon.api + "/metrics") as r:
        text = await r.text()
    assert "watcher_jobs_slow_total 1.0" in text  # detected again after the restart, and stored once
    assert daemon.stop() == 0
