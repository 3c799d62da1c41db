"""`adaptive`: duration-aware adaptive polling against the backoff curve (SPEC §9, §12), policy level.

Both strategies run on the same workload in one run (`watcher.polling.adaptive.bench`): six job types
(log-normal medians from seconds to an hour, one heavy-tailed, one bimodal), a warm-up in which the models
learn, a main phase with `adaptive_lag_target_s` set to backoff's measured pooled p95, and a drift phase in
which one type's durations double halfway. Simulated time, the daemon's own policy and planner code, no
I/O: an hour-long type costs milliseconds. Reported per strategy: upstream calls per finished job and the
pooled detection lag p50/p95/p99, then the two targets as PASS/FAIL, and the frontier of calls against
p95 lag at other targets. Then a smaller real-time run through real daemons confirms the figures
(`adaptive_live`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from watcher.bench import harness
from watcher.bench.adaptive_live import run_live
from watcher.bench.report import Figure, ScenarioResult
from watcher.polling.adaptive.bench import render, run_policy_bench

SEED = 1
PER_TYPE, QUICK_PER_TYPE = 2000, 300  # jobs per type in each measured phase
WINDOW, QUICK_WINDOW = 1000, 150  # `adaptive_window`; the warm-up is two windows per type


def figures(result: dict[str, Any], res: ScenarioResult) -> None:
    """Both strategies' figures side by side, then the targets' rows as the policy bench checked them."""
    for phase in ("main", "drift"):
        for strategy in ("backoff", "adaptive"):
            s = result[phase][strategy]
            res.add(f"{phase} {strategy} calls per finished job", s["calls_per_job"])
            for q in ("p50", "p95", "p99"):
                res.add(f"{phase} {strategy} detection lag {q}", s[f"lag_{q}_s"], "s")
    for row in result["checks"]:
        res.figures.append(Figure(row["name"], row["value"], "x", row["target"], bool(row["passed"])))


async def run(ctx: harness.Context) -> ScenarioResult:
    """Run the policy-level comparison in a worker thread (it is CPU-bound) and report it."""
    per_type = QUICK_PER_TYPE if ctx.quick else PER_TYPE
    window = QUICK_WINDOW if ctx.quick else WINDOW
    ctx.say(f"adaptive: {per_type} jobs per type and phase, window {window}, simulated time")
    result = await asyncio.to_thread(
        run_policy_bench, SEED, per_type=per_type, window=window, frontier=not ctx.quick
    )
    res = ScenarioResult("adaptive")
    figures(result, res)
    res.notes.append(
        f"seed {SEED}, lag target = backoff's pooled p95 = {result['lag_target_s']:g} s; "
        "the same jobs for both strategies; policy level in simulated time "
        "(python -m watcher.polling.adaptive.bench for seeds, variants and per-type detail)"
    )
    table = render(result).splitlines()[1:]  # its first line says what the note above says
    res.notes.extend(line for line in table if line and line[:4] not in ("PASS", "FAIL"))
    await run_live(ctx, res, result["lag_target_s"])
    return res
