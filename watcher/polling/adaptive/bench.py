"""`watcher bench adaptive`, policy level: backoff against adaptive on one workload, same jobs, same seed.

Phases, all in simulated time (no asyncio, no HTTP), each on fresh jobs from the one seed:
1. warm-up: jobs polled by backoff while the models learn (two full windows per type);
2. main: jobs polled by the strategy under test, `adaptive_lag_target_s` set to the pooled p95 that
   backoff measured on the same jobs;
3. drift: jobs in which one type's durations double halfway;
4. frontier: adaptive on the main jobs at several lag targets (calls against p95 lag).
The phases follow each other without a pause in arrivals, and each strategy runs them all in one
simulation (the warm-up always by backoff), so models learn from every finish in order, as in a daemon
whose strategy was switched when the main phase began.
Targets (SPEC §9): adaptive ≤ 0.5 x backoff's calls per finished job with pooled p95 no worse (stretch;
≤ 0.7 x makes it the default), and in the drift phase ≤ 0.75 x the calls with p95 ≤ 1.2 x.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from typing import Any

from watcher.polling.adaptive.model import DurationModels
from watcher.polling.adaptive.planner import Objective, Planner
from watcher.polling.adaptive.schedule import AdaptiveSettings
from watcher.polling.adaptive.sim import (
    DEFAULT_POLICY,
    DRIFT_TYPE,
    WORKLOAD,
    Job,
    Outcome,
    make_jobs,
    percentile,
    run,
)

MAIN, DRIFT = 1, 2  # phase indices; 0 is the warm-up

STRETCH_RATIO = 0.5
DEFAULT_RATIO = 0.7
DRIFT_RATIO = 0.75
DRIFT_LAG_RATIO = 1.2
FRONTIER = (0.5, 0.75, 1.5, 2.0)  # lag targets, as multiples of backoff's p95
# Alternatives kept for comparison: (label, objective, pooled budget)
VARIANTS: tuple[tuple[str, Objective, bool], ...] = (
    ("lag objective, pooled budget", "lag", True),
    ("lag objective, per-type p95", "lag", False),
    ("lateness objective, per-type p95", "exceed", False),
)


def stats(out: Outcome) -> dict[str, float]:
    """Calls per finished job and pooled detection lag percentiles of one strategy's run."""
    return {
        "jobs": float(out.jobs),
        "calls_per_job": round(out.calls_per_job(), 3),
        "lag_p50_s": round(out.lag(50), 2),
        "lag_p95_s": round(out.lag(95), 2),
        "lag_p99_s": round(out.lag(99), 2),
    }


def _per_type(out: Outcome) -> dict[str, dict[str, float]]:
    rows = {}
    for kind, job_type in enumerate(WORKLOAD):
        lags = out.lags_by_kind.get(kind, [])
        rows[job_type.name] = {
            "calls_per_job": round(out.calls_by_kind.get(kind, 0) / max(1, len(lags)), 2),
            "lag_p95_s": round(percentile(lags, 95), 1),
        }
    return rows


def run_policy_bench(
    seed: int = 1,
    *,
    per_type: int = 2000,
    warmup_per_type: int | None = None,
    window: int = 1000,
    variants: bool = False,
    frontier: bool = True,
) -> dict[str, Any]:
    """Run every phase for one seed; returns the figures, per-type detail and PASS/FAIL rows."""
    started = time.monotonic()
    settings = AdaptiveSettings(window=window)
    warmup = warmup_per_type or 2 * window
    jobs = make_jobs(
        WORKLOAD, [(warmup, None), (per_type, None), (per_type, DRIFT_TYPE)], random.Random(seed)
    )
    no_drift = [j for j in jobs if j.phase < DRIFT]

    def adaptive(
        jobs: list[Job], target: float, objective: Objective = "exceed", pooled: bool = True
    ) -> list[Outcome]:
        models = DurationModels(settings.window, settings.max_types)
        cfg = replace(settings, lag_target_s=target)
        planner = Planner(models, cfg, DEFAULT_POLICY, objective=objective, pooled=pooled)
        return run(jobs, WORKLOAD, models, random.Random(seed + 2), planner=planner, adaptive_from=MAIN)

    backoff = run(
        jobs, WORKLOAD, DurationModels(settings.window, settings.max_types), random.Random(seed + 1)
    )
    target = backoff[MAIN].lag(95)
    tested = adaptive(jobs, target)
    main, drift = tested[MAIN], tested[DRIFT]

    result: dict[str, Any] = {
        "seed": seed,
        "workload": {t.name: t.describe() for t in WORKLOAD},
        "jobs_per_type": {"warmup": warmup, "main": per_type, "drift": per_type},
        "window": window,
        "lag_target_s": round(target, 2),
        "main": {"backoff": stats(backoff[MAIN]), "adaptive": stats(main)},
        "main_per_type": {"backoff": _per_type(backoff[MAIN]), "adaptive": _per_type(main)},
        "drift": {"backoff": stats(backoff[DRIFT]), "adaptive": stats(drift), "type": DRIFT_TYPE},
        "drift_per_type": {"backoff": _per_type(backoff[DRIFT]), "adaptive": _per_type(drift)},
    }
    if frontier:
        points = [{"target_s": round(target, 2), **stats(main)}]
        for factor in FRONTIER:
            out = adaptive(no_drift, target * factor)[MAIN]
            points.append({"target_s": round(target * factor, 2), **stats(out)})
        result["frontier"] = sorted(points, key=lambda p: p["target_s"])
    if variants:
        result["variants"] = {
            label: stats(adaptive(no_drift, target, objective, pooled)[MAIN])
            for label, objective, pooled in VARIANTS
        }
    result["checks"] = _checks(backoff[MAIN], main, backoff[DRIFT], drift)
    result["passed"] = {row["name"]: row["passed"] for row in result["checks"]}
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def _checks(backoff: Outcome, main: Outcome, drift_b: Outcome, drift_a: Outcome) -> list[dict[str, Any]]:
    ratio = main.calls_per_job() / backoff.calls_per_job()
    lag_ok = main.lag(95) <= backoff.lag(95)
    drift_ratio = drift_a.calls_per_job() / drift_b.calls_per_job()
    drift_lag = drift_a.lag(95) / max(drift_b.lag(95), 1e-9)
    return [
        {
            "name": "calls vs backoff, p95 lag no worse (stretch)",
            "value": round(ratio, 3),
            "target": f"<= {STRETCH_RATIO} x, p95 <= backoff's",
            "passed": ratio <= STRETCH_RATIO and lag_ok,
        },
        {
            "name": "calls vs backoff, p95 lag no worse (default)",
            "value": round(ratio, 3),
            "target": f"<= {DEFAULT_RATIO} x, p95 <= backoff's",
            "passed": ratio <= DEFAULT_RATIO and lag_ok,
        },
        {
            "name": "drift: calls vs backoff",
            "value": round(drift_ratio, 3),
            "target": f"<= {DRIFT_RATIO} x",
            "passed": drift_ratio <= DRIFT_RATIO,
        },
        {
            "name": "drift: p95 lag vs backoff",
            "value": round(drift_lag, 3),
            "target": f"<= {DRIFT_LAG_RATIO} x",
            "passed": drift_lag <= DRIFT_LAG_RATIO,
        },
    ]


def render(result: dict[str, Any]) -> str:
    """Both strategies side by side, the frontier, and the PASS/FAIL rows, as plain text."""
    lines = [f"seed {result['seed']}: lag target = backoff's pooled p95 = {result['lag_target_s']:.1f} s"]
    header = f"{'phase':<8} {'strategy':<10} {'calls/job':>9} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7}"
    lines += [header, "-" * len(header)]
    for phase in ("main", "drift"):
        for strategy in ("backoff", "adaptive"):
            s = result[phase][strategy]
            lines.append(
                f"{phase:<8} {strategy:<10} {s['calls_per_job']:>9.2f} {s['lag_p50_s']:>7.1f} "
                f"{s['lag_p95_s']:>7.1f} {s['lag_p99_s']:>7.1f}"
            )
    if "frontier" in result:
        lines.append("frontier (adaptive): target s -> calls/job, p95 s")
        for p in result["frontier"]:
            lines.append(f"  {p['target_s']:>7.1f} -> {p['calls_per_job']:>6.2f}, {p['lag_p95_s']:>6.1f}")
    for label, s in result.get("variants", {}).items():
        lines.append(f"variant {label}: {s['calls_per_job']:.2f} calls/job, p95 {s['lag_p95_s']:.1f} s")
    for row in result["checks"]:
        verdict = "PASS" if row["passed"] else "FAIL"
        lines.append(f"{verdict}  {row['name']}: {row['value']} (target {row['target']})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m watcher.polling.adaptive.bench [--seed N ...] [--json FILE]`: the tables; 0 if all pass."""
    parser = argparse.ArgumentParser(prog="python -m watcher.polling.adaptive.bench")
    parser.add_argument("--seed", type=int, action="append", help="repeat for several seeds (default 1)")
    parser.add_argument("--per-type", type=int, default=2000, help="jobs per type in each measured phase")
    parser.add_argument("--variants", action="store_true", help="also run the alternatives that lost")
    parser.add_argument("--json", help="write every seed's result to this file")
    args = parser.parse_args(argv)
    results = []
    for seed in args.seed or [1]:
        result = run_policy_bench(seed, per_type=args.per_type, variants=args.variants)
        sys.stdout.write(render(result))
        results.append(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    return 0 if all(all(r["passed"].values()) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
