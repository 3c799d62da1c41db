"""Job types with duration distributions for `watcher simulate --scenario` (SPEC §12).

A scenario may name job types, each a duration distribution (`lognormal`, `pareto` heavy tail, `bimodal`),
and a `time_scale` that divides every drawn duration, so an hour-long type runs in a minute. A job spec
`{"type": NAME}` then creates a job of that `name` that is `active` at once and succeeds after a duration
drawn from its type, from the simulator's seeded generator. The distributions are the policy-level
bench's (`watcher.polling.adaptive.sim.JobType`), so a real-time run and the simulation agree.
"""

from __future__ import annotations

import math
from typing import Any, get_args

from watcher.polling.adaptive.sim import JobType, Shape

_KEYS = {"name", "shape", "median_s", "sigma", "second_median_s", "share"}


def _positive(value: Any, where: str, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: expected a number")
    if value < 0 or (value == 0 and not zero):
        raise ValueError(f"{where}: expected a number > 0")
    return float(value)


def parse_type(raw: Any, index: int) -> JobType:
    """One `types[i]` entry; ValueError names the key at fault."""
    where = f"types[{index}]"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected an object")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    name = raw.get("name")
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError(f"{where}.name: expected a non-empty string")
    shape = raw.get("shape", "lognormal")
    if shape not in get_args(Shape):
        raise ValueError(f"{where}.shape: expected one of {', '.join(get_args(Shape))}")
    sigma = _positive(raw.get("sigma", 0.3), f"{where}.sigma", zero=shape != "pareto")
    share = _positive(raw.get("share", 1.0), f"{where}.share")
    if share > 1.0:
        raise ValueError(f"{where}.share: expected a fraction in (0, 1]")
    second = raw.get("second_median_s", 0.0)
    return JobType(
        name,
        shape,
        _positive(raw.get("median_s"), f"{where}.median_s"),
        sigma,
        second_median_s=_positive(second, f"{where}.second_median_s") if shape == "bimodal" else 0.0,
        share=share if shape == "bimodal" else 1.0,
    )


def parse_scenario(data: Any) -> tuple[dict[str, JobType], float, list[Any]]:
    """A scenario: a list of job specs, or `{"types": [...], "time_scale": N, "jobs": [...]}`."""
    if isinstance(data, list):
        return {}, 1.0, data
    if not isinstance(data, dict):
        raise ValueError("expected a JSON list of job specs or an object with types and jobs")
    unknown = set(data) - {"types", "time_scale", "jobs"}
    if unknown:
        raise ValueError(f"unknown keys {', '.join(sorted(unknown))}")
    raw_types = data.get("types", [])
    if not isinstance(raw_types, list):
        raise ValueError("types: expected a list")
    types: dict[str, JobType] = {}
    for i, raw in enumerate(raw_types):
        t = parse_type(raw, i)
        if t.name in types:
            raise ValueError(f"types[{i}].name: {t.name!r} is defined twice")
        types[t.name] = t
    scale = _positive(data.get("time_scale", 1.0), "time_scale")
    jobs = data.get("jobs", [])
    if not isinstance(jobs, list):
        raise ValueError("jobs: expected a list")
    return types, scale, jobs
