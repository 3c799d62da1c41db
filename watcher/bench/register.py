"""`register`: 100,000 watches through `POST /v1/watches/batch` while the daemon keeps polling (SPEC §9).

The daemon starts with watches of its own, polled at a steady rate against an always-active simulator.
Then `CLIENTS` clients post batches of 1,000 new job ids until all are registered. Measured: the wall time
of the whole registration (target under 20 s) and the daemon's poll rate during it, against its rate in a
window just before (same run): a daemon that stops polling while it registers would show it here. New
watches are due at once, so during the registration the daemon also works through a growing backlog.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp

from watcher.bench import harness
from watcher.bench.report import ScenarioResult

TARGET_S = 20.0
BATCH = 1_000  # the API's maximum (SPEC §7)
CLIENTS = 4
SAMPLE_S = 0.5  # "keeps polling": no interval this long without a poll during the registration


async def _post_all(d: harness.Daemon, ids: list[str]) -> float:
    """Post every id in batches from `CLIENTS` concurrent clients; the seconds it took."""
    batches = [ids[i : i + BATCH] for i in range(0, len(ids), BATCH)]
    queue = iter(batches)

    async def client(session: aiohttp.ClientSession) -> None:
        for batch in queue:
            body = {"watches": [{"job_id": j} for j in batch]}
            async with session.post(d.api + "/v1/watches/batch", json=body) as resp:
                if resp.status != 200:
                    raise harness.BenchError(f"register: POST /v1/watches/batch answered {resp.status}")
                doc = await resp.json()
            if doc.get("created") != len(batch):
                raise harness.BenchError(
                    f"register: a batch created {doc.get('created')} of {len(batch)} watches"
                )

    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(client(session) for _ in range(CLIENTS)))
    return time.monotonic() - started


async def _rate(d: harness.Daemon, session: aiohttp.ClientSession, seconds: float) -> float:
    before, t0 = await d.polls_total(session), time.monotonic()
    await asyncio.sleep(seconds)
    return (await d.polls_total(session) - before) / (time.monotonic() - t0)


async def run(ctx: harness.Context) -> ScenarioResult:
    """Steady polling, then the registration with the poll rate watched alongside."""
    res = ScenarioResult("register")
    new, existing, rate = (5_000, 1_000, 100.0) if ctx.quick else (100_000, 10_000, 200.0)
    sample_s = SAMPLE_S / 5 if ctx.quick else SAMPLE_S
    store_url = harness.fresh_store_url(ctx.store, ctx.workdir, "register")
    await harness.build_store(store_url, harness.job_ids(existing, seed=21), time.time())
    ids = harness.job_ids(new, seed=22)
    async with harness.simulator(ctx.workdir, "--unknown-jobs", "active", "--max-log", "0") as sim:
        period = existing / rate
        config, port = harness.daemon_config(
            ctx,
            "register",
            sim,
            store_url,
            upstream={"rate_limit_per_s": 2.5 * rate},
            polling={
                "initial_interval_s": period,
                "multiplier": 1.0,
                "max_interval_s": period,
                "jitter": 0.2,
            },
        )
        async with (
            harness.daemon(ctx.workdir, config, port, name="register-daemon") as d,
            aiohttp.ClientSession() as s,
        ):
            window = min(ctx.window_s, 3.0)
            ctx.say(f"register: poll rate before, {window:g}s")
            await asyncio.sleep(1.0)
            before = await _rate(d, s, window)
            ctx.say(f"register: {new:,} watches in batches of {BATCH:,} from {CLIENTS} clients")
            polls0, t0 = await d.polls_total(s), time.monotonic()
            posting = asyncio.ensure_future(_post_all(d, ids))
            samples = [polls0]
            while not posting.done():
                await asyncio.wait([posting], timeout=sample_s)
                samples.append(await d.polls_total(s))
            seconds = posting.result()
            during = (samples[-1] - polls0) / (time.monotonic() - t0)
            # The last interval is cut short by the end of the registration: only whole ones count.
            slowest = min((b - a for a, b in itertools.pairwise(samples[:-1])), default=None)
    res.add(f"{new:,} watches registered in", seconds, "s", at_most=TARGET_S)
    res.add("registrations per second", new / seconds, "/s")
    res.add("polls/s before", before, "polls/s")
    res.add("polls/s during", during, "polls/s")
    res.add(
        f"fewest polls in a {sample_s:g}s interval during",
        slowest,
        at_least=1,
    )
    res.notes.append(
        f"{existing:,} watches polling at ~{rate:g}/s beforehand; new watches are due at once, so polling"
        f" is capped by rate_limit_per_s={2.5 * rate:g} during the registration"
    )
    return res
