"""`latency`: from a transition observed by the daemon to its webhook received, p50/p99 (SPEC §9).

The simulator starts with the jobs already scripted to finish one after another over a spread, so
transitions arrive steadily rather than in one burst; a healthy receiver (`watcher.bench.sink`, its own
process) notes the arrival of each delivery. Latency is arrival minus the body's `detected_at`, the moment
the daemon saw the new status: it covers saving the event, waking the outbox worker, claiming, signing,
sending. Both clocks are this machine's; `detected_at` has millisecond resolution.

Baseline, same run: the same receiver's latency for plain signed POSTs sent from this process one at a time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from watcher.bench import harness
from watcher.bench.report import ScenarioResult
from watcher.clock import iso_utc
from watcher.delivery.signing import HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, sign

TARGET_P99_MS = 50.0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method; `values` must not be empty."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def new_secret() -> str:
    """A fresh Standard Webhooks secret for one run; never printed."""
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


async def deliveries(rx: harness.Child, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
    """What the sink has recorded so far."""
    async with session.get(rx.url.rsplit("/", 1)[0] + "/_bench/deliveries") as resp:
        doc = await resp.json()
    return list(doc["deliveries"])


async def wait_deliveries(
    rx: harness.Child, session: aiohttp.ClientSession, count: int, timeout_s: float
) -> list[dict[str, Any]]:
    """Poll the sink until it holds `count` deliveries; BenchError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = await deliveries(rx, session)
        if len(got) >= count:
            return got
        if time.monotonic() > deadline:
            raise harness.BenchError(f"only {len(got)} of {count} webhooks arrived within {timeout_s:g}s")
        await asyncio.sleep(0.25)


async def _bare_posts(rx: harness.Child, secret: str, count: int) -> list[float]:
    """One-way latency of `count` signed POSTs sent one at a time, in milliseconds."""
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            msg_id = str(uuid.uuid4())
            now = time.time()
            body = json.dumps(
                {"type": "bench.baseline", "data": {"detected_at": iso_utc(now), "job": {}}}
            ).encode()
            ts = int(now)
            headers = {
                HEADER_ID: msg_id,
                HEADER_TIMESTAMP: str(ts),
                HEADER_SIGNATURE: sign([secret], msg_id, ts, body),
                "Content-Type": "application/json",
            }
            async with session.post(rx.url, data=body, headers=headers) as resp:
                if resp.status >= 300:
                    raise harness.BenchError(
                        f"latency: the receiver answered {resp.status} to a baseline POST"
                    )
            await asyncio.sleep(0.005)
        got = await deliveries(rx, session)
    return [(d["received_at"] - d["detected_at"]) * 1000 for d in got if d["type"] == "bench.baseline"]


@contextlib.asynccontextmanager
async def hung_receiver() -> AsyncIterator[str]:
    """A webhook URL on loopback whose server accepts every connection and never answers (a hung peer)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # never answered; closed when the scenario ends

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


async def _phase(
    ctx: harness.Context,
    tag: str,
    neighbours: list[dict[str, Any]],
    baseline: int,
    *,
    grace_s: float = 60.0,
    partial: bool = False,
) -> tuple[list[float], list[float]]:
    """One daemon run: jobs finishing steadily, every `job.success` to the healthy `bench` webhook timed
    (and to `neighbours`, other webhooks of the same daemon); the latencies and the baseline's, in ms.

    Whatever has not arrived `grace_s` after the last job finished is an error, unless `partial`: then
    only what arrived is returned (a reference run that is expected to fall behind).
    """
    jobs, spread_s, poll_s, lead_s = (60, 3.0, 1.0, 3.0) if ctx.quick else (1_200, 12.0, 4.0, 5.0)
    ids = harness.job_ids(jobs, seed=7)
    store_url = harness.fresh_store_url(ctx.store, ctx.workdir, tag)
    await harness.build_store(store_url, ids, time.time())
    scenario = ctx.workdir / f"{tag}-jobs.json"
    specs = [
        {"id": j, "status": "active", "script": [[lead_s + i * spread_s / jobs, "success"]]}
        for i, j in enumerate(ids)
    ]
    scenario.write_text(json.dumps(specs))
    secret = new_secret()
    async with (
        harness.simulator(ctx.workdir, "--scenario", str(scenario), "--max-log", "0") as sim,
        harness.sink(ctx.workdir, secret) as rx,
    ):
        bare = await _bare_posts(rx, secret, baseline) if baseline else []
        port = harness.free_port()
        config = harness.write_config(
            ctx.workdir / f"{tag}.toml",
            upstream_url=sim.url,
            store_url=store_url,
            api_port=port,
            upstream={"rate_limit_per_s": 5_000.0},
            polling={
                "initial_interval_s": poll_s,
                "multiplier": 1.0,
                "max_interval_s": poll_s,
                "jitter": 0.2,
            },
            webhooks=[
                {"name": "bench", "url": rx.url, "secret": secret, "timeout_s": 5.0},
                *({"secret": secret, **hook} for hook in neighbours),
            ],
        )
        ctx.say(f"{tag}: {jobs:,} jobs finishing over {spread_s:g}s, each polled every ~{poll_s:g}s")
        async with (
            harness.daemon(ctx.workdir, config, port, name=f"{tag}-daemon"),
            aiohttp.ClientSession() as s,
        ):
            wait_s = lead_s + spread_s + 3 * poll_s + grace_s
            try:
                got = await wait_deliveries(rx, s, len(bare) + jobs, wait_s)
            except harness.BenchError:
                if not partial:
                    raise
                got = await deliveries(rx, s)
    (ctx.workdir / f"{tag}-deliveries.json").write_text(json.dumps(got))
    lat = [(d["received_at"] - d["detected_at"]) * 1000 for d in got if d["type"] == "job.success"]
    return lat, bare


async def run(ctx: harness.Context) -> ScenarioResult:
    """Jobs finishing steadily over a spread; every `job.success` webhook timed, alone and next to a
    receiver that hangs (issue 14), with and without the per-endpoint budget."""
    res = ScenarioResult("latency")
    ctx.say("latency: baseline of plain signed POSTs to the receiver")
    lat, bare = await _phase(ctx, "latency", [], 50 if ctx.quick else 300)
    res.add("events timed", len(lat))
    res.add("plain POST p50", percentile(bare, 50), "ms")
    res.add("plain POST p99", percentile(bare, 99), "ms")
    res.add("detected -> received p50", percentile(lat, 50), "ms")
    res.add("detected -> received p99", percentile(lat, 99), "ms", at_most=TARGET_P99_MS)
    res.add("detected -> received max", max(lat), "ms")
    async with hung_receiver() as hung_url:
        hung = {"name": "hung", "url": hung_url, "timeout_s": 5.0, "max_attempts": 1_000}
        # As before issue 14: the hung webhook may take every slot, and no breaker takes it out.
        unbounded = {**hung, "concurrency": 16, "breaker_failures": 1_000_000}
        before, _ = await _phase(ctx, "latency-hung-unbounded", [unbounded], 0, grace_s=10.0, partial=True)
        lat_after, _ = await _phase(ctx, "latency-hung", [hung], 0)
    jobs = len(lat)
    res.add("with a hung neighbour, as before (no budget, no breaker): arrived in time", len(before))
    res.add("with a hung neighbour, as before: p99 of those that arrived", percentile(before, 99), "ms")
    res.add("with a hung neighbour, p50", percentile(lat_after, 50), "ms")
    res.add("with a hung neighbour, p99", percentile(lat_after, 99), "ms", at_most=TARGET_P99_MS)
    spread_s, poll_s = (3.0, 1.0) if ctx.quick else (12.0, 4.0)
    res.notes.append(
        f"{jobs:,} jobs finishing over {spread_s:g}s, each polled every {poll_s:g}s +-20 %;"
        " times have millisecond resolution. The hung neighbour is a second webhook of the same daemon"
        " whose server accepts connections and never answers (timeout_s 5): by default it holds only its"
        " own 4 slots (`concurrency`) until its breaker opens. 'As before' gives it every slot and no"
        f" breaker, as before issue 14; it counts what arrived within 10 s of the last of the {jobs:,} jobs"
        " finishing"
    )
    return res
