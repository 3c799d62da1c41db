"""`watcher simulate --scenario` job types (SPEC §12): named duration distributions, time-scaled."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest

from watcher.devtools.clock import ManualClock
from watcher.devtools.simulate import simulate_main
from watcher.devtools.simulate.jobs import SimState
from watcher.devtools.simulate.jobtypes import parse_scenario

SCENARIO = {
    "types": [
        {"name": "thumbnail", "shape": "lognormal", "median_s": 5.0, "sigma": 0.2},
        {"name": "crawl", "shape": "pareto", "median_s": 60.0, "sigma": 1.2},
        {
            "name": "ingest",
            "shape": "bimodal",
            "median_s": 20,
            "sigma": 0.3,
            "second_median_s": 900,
            "share": 0.7,
        },
    ],
    "time_scale": 10,
    "jobs": [{"type": "thumbnail"}, {"id": "5135bfe3-b2c7-41f3-a44f-f4b58e7384df", "status": "queued"}],
}


async def test_a_typed_job_is_named_active_and_succeeds_after_a_drawn_scaled_duration() -> None:
    """`{"type": NAME}`: the type's name, active, one scripted success at duration / time_scale."""
    clock = ManualClock()
    sim = SimState(rng=random.Random(1), clock=clock)
    sim.job_types, sim.time_scale, specs = parse_scenario(SCENARIO)
    first = sim.add_job_spec(specs[0])
    assert (first.name, first.status) == ("thumbnail", "active")
    (step,) = first.script
    assert step.status == "success" and 0.2 < step.after_s < 1.0  # about 5 s / 10
    durations = [sim.add_job_spec({"type": "thumbnail"}).script[0].after_s for _ in range(300)]
    assert 0.45 < statistics.median(durations) < 0.55
    await clock.advance(2.0)
    first.advance(clock.now())
    assert first.status == "success"
    job = sim.job_view(first)
    assert job["name"] == "thumbnail" and job["createdAt"] < job["updatedAt"]


def test_a_spec_keeps_its_own_keys_over_the_types() -> None:
    """A typed spec may still set its id, workspace or its own script."""
    sim = SimState(rng=random.Random(2), clock=ManualClock())
    sim.job_types, sim.time_scale, _ = parse_scenario(SCENARIO)
    job = sim.add_job_spec({"type": "ingest", "status": "queued", "script": [[1.0, "failed"]]})
    assert (job.name, job.status, job.script[0].status) == ("ingest", "queued", "failed")
    with pytest.raises(ValueError, match="type: expected one of the scenario's types"):
        sim.add_job_spec({"type": "nope"})


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ({"types": [{"name": "x", "median_s": -1}]}, "types[0].median_s"),
        ({"types": [{"name": "x", "median_s": 1, "shape": "gamma"}]}, "types[0].shape"),
        ({"types": [{"name": "x", "median_s": 1, "colour": 1}]}, "unknown keys colour"),
        ({"types": [{"name": "x", "median_s": 1}, {"name": "x", "median_s": 2}]}, "defined twice"),
        ({"time_scale": 0}, "time_scale"),
        ({"jobs": [{"type": "x"}]}, "job 0: type"),
        ({"typos": []}, "unknown keys typos"),
        ("nope", "expected a JSON list"),
    ],
)
def test_a_bad_scenario_is_one_line_naming_the_key(
    tmp_path: Path, scenario: object, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2, one line, the key at fault named; nothing served."""
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario))
    assert simulate_main(["--port", "0", "--scenario", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
