"""The simulated Oration API: auth, control API, scripted timelines, faults, request log and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.eventually import eventually
from watcher.clock import iso_utc
from watcher.devtools.clock import ManualClock
from watcher.devtools.simulate import Faults, Simulator, simulate_main
from watcher.devtools.simulate.cli import _build

AUTH = {"Authorization": "Bearer sim-token", "x-api-key": "sim-key", "x-workspace-slug": "sim"}
OTHER = {"Authorization": "Bearer t2", "x-api-key": "k2", "x-workspace-slug": "other"}


class Harness:
    """A started simulator on a ManualClock plus a session to talk to it."""

    def __init__(self, sim: Simulator, clock: ManualClock, url: str, session: aiohttp.ClientSession) -> None:
        self.sim, self.clock, self.url, self.session = sim, clock, url, session
        self.root = url.removesuffix("/api/v2")

    async def poll(self, job_id: str, headers: dict[str, str] = AUTH) -> tuple[int, Any]:
        """GET the job from the upstream route; the body is JSON when it parses, else text."""
        async with self.session.get(f"{self.url}/jobs/{job_id}", headers=headers) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def ctl(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the control API."""
        async with self.session.request(method, self.root + path, json=body) as resp:
            return resp.status, (await resp.json() if resp.status != 204 else None)


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    """A simulator with a second workspace, a manual clock and a fixed seed."""
    clock = ManualClock()
    sim = Simulator(
        workspaces={"other": ("t2", "k2")}, rng=random.Random(42), clock=clock, shutdown_timeout_s=0.5
    )
    url = await sim.start()
    async with aiohttp.ClientSession() as session:
        yield Harness(sim, clock, url, session)
    await sim.stop()


class TestAuth:
    """The upstream route enforces SPEC §2's three headers."""

    @pytest.mark.parametrize(
        ("headers", "code"),
        [
            ({}, 401),
            ({**AUTH, "Authorization": "Bearer nope"}, 401),
            ({**AUTH, "Authorization": "sim-token"}, 401),
            ({**AUTH, "x-api-key": "nope"}, 401),
            ({k: v for k, v in AUTH.items() if k != "x-api-key"}, 401),
            ({**AUTH, "x-workspace-slug": "other"}, 403),
            ({k: v for k, v in AUTH.items() if k != "x-workspace-slug"}, 403),
            (AUTH, 200),
        ],
    )
    async def test_credentials(self, h: Harness, headers: dict[str, str], code: int) -> None:
        """Wrong or missing token or key is 401, a slug the credentials do not cover is 403."""
        job = h.sim.add_job()
        status, body = await h.poll(job.id, headers)
        assert status == code
        if code != 200:
            assert "error" in body

    async def test_jobs_are_scoped_to_their_workspace(self, h: Harness) -> None:
        """A job is visible only with its own workspace's credentials."""
        job = h.sim.add_job(workspace="other")
        assert (await h.poll(job.id, OTHER))[0] == 200
        assert (await h.poll(job.id, AUTH))[0] == 404


class TestJobs:
    """Job bodies, the control API and scripted lifecycles."""

    async def test_body_shape(self, h: Harness) -> None:
        """The body has exactly SPEC §2's fields, with ms UTC timestamps."""
        status, created = await h.ctl("POST", "/_sim/jobs", {"name": "customer.createBatch"})
        assert status == 201
        status, body = await h.poll(created["id"])
        assert status == 200
        assert set(body) == {
            "id",
            "createdAt",
            "updatedAt",
            "jobProviderId",
            "name",
            "status",
            "error",
            "workspaceId",
        }
        assert body["createdAt"] == body["updatedAt"] == iso_utc(h.clock.now())
        assert body["createdAt"].endswith(".000Z")
        assert (body["status"], body["error"], body["workspaceId"]) == (
            "queued",
            None,
            h.sim.workspace_id("sim"),
        )

    async def test_control_api_round_trip(self, h: Harness) -> None:
        """Create, move, list and delete through /_sim/jobs."""
        job_id = "5135BFE3-B2C7-41F3-A44F-F4B58E7384DF"
        status, job = await h.ctl("POST", "/_sim/jobs", {"id": job_id, "status": "active"})
        assert (status, job["id"], job["status"]) == (201, job_id.lower(), "active")
        assert (await h.ctl("POST", "/_sim/jobs", {"id": job_id}))[0] == 409
        await h.clock.advance(2.5)
        status, moved = await h.ctl("POST", f"/_sim/jobs/{job['id']}", {"status": "failed", "error": "boom"})
        assert (status, moved["status"], moved["error"]) == (200, "failed", "boom")
        assert moved["updatedAt"] == iso_utc(h.clock.now()) != job["updatedAt"]
        _, same = await h.ctl("POST", f"/_sim/jobs/{job['id']}", {"status": "failed", "error": "boom"})
        assert same["updatedAt"] == moved["updatedAt"]  # no change, no new updatedAt
        _, listed = await h.ctl("GET", "/_sim/jobs")
        assert [j["id"] for j in listed["jobs"]] == [job["id"]]
        assert (await h.ctl("DELETE", f"/_sim/jobs/{job['id']}"))[0] == 204
        assert (await h.ctl("DELETE", f"/_sim/jobs/{job['id']}"))[0] == 404
        assert (await h.poll(job["id"]))[0] == 404

    @pytest.mark.parametrize(
        ("spec", "field"),
        [
            ({"id": "not-a-uuid"}, "id"),
            ({"status": ""}, "status"),
            ({"status": 7}, "status"),
            ({"workspace": "nope"}, "workspace"),
            ({"script": [{"after_s": -1, "status": "active"}]}, "script[0].after_s"),
            ({"script": [{"after_s": 1, "status": "x" * 201}]}, "script[0].status"),
            ({"colour": "red"}, "colour"),
        ],
    )
    async def test_bad_job_specs(self, h: Harness, spec: dict[str, Any], field: str) -> None:
        """A bad spec is a 400 naming the field, and creates nothing."""
        status, body = await h.ctl("POST", "/_sim/jobs", spec)
        assert status == 400
        assert field in body["error"]
        assert h.sim.jobs == {}

    async def test_scripted_timeline(self, h: Harness) -> None:
        """Scripted steps apply as the clock passes them, with updatedAt at the step's time."""
        start = h.clock.now()
        script = [{"after_s": 3, "status": "success"}, {"after_s": 1, "status": "active"}]
        _, job = await h.ctl("POST", "/_sim/jobs", {"script": script})
        await h.clock.advance(0.5)
        assert (await h.poll(job["id"]))[1]["status"] == "queued"
        await h.clock.advance(1.0)
        body = (await h.poll(job["id"]))[1]
        assert (body["status"], body["updatedAt"]) == ("active", iso_utc(start + 1))
        await h.clock.advance(10)
        body = (await h.poll(job["id"]))[1]
        assert (body["status"], body["updatedAt"]) == ("success", iso_utc(start + 3))

    async def test_visible_after(self, h: Harness) -> None:
        """A job is 404 until visible_after_s has passed."""
        _, job = await h.ctl("POST", "/_sim/jobs", {"visible_after_s": 5})
        assert (await h.poll(job["id"]))[0] == 404
        await h.clock.advance(5)
        assert (await h.poll(job["id"]))[0] == 200


class TestFaults:
    """Fault fractions, forced faults and the fault settings endpoint."""

    async def test_fractions_are_roughly_honoured(self, h: Harness) -> None:
        """With a seed, each fault kind hits about its configured fraction of requests."""
        settings = {"server_error": 0.2, "rate_limit": 0.1, "retry_after_s": 3, "garbage": 0.15}
        status, faults = await h.ctl("PUT", "/_sim/faults", settings)
        assert (status, faults["slow"], faults["garbage"]) == (200, 0.0, 0.15)
        job = h.sim.add_job()
        answers = [await h.poll(job.id) for _ in range(600)]
        by_fault = h.sim.stats()["by_fault"]
        for kind, fraction in (("server_error", 0.2), ("rate_limit", 0.1), ("garbage", 0.15)):
            assert abs(by_fault[kind] / 600 - fraction) < 0.05, (kind, by_fault)
        assert abs(by_fault["none"] / 600 - 0.55) < 0.06
        valid = [b for s, b in answers if s == 200 and isinstance(b, dict) and b.get("status") == "queued"]
        assert len(valid) >= by_fault["none"]  # some garbage variants still look like a job

    async def test_bad_fault_settings(self, h: Harness) -> None:
        """Out-of-range or unknown settings are refused and the old settings stay."""
        for body in ({"server_error": 1.5}, {"drop": "x"}, {"bogus": 1}, [1]):
            status, answer = await h.ctl("PUT", "/_sim/faults", body)
            assert status == 400, body
            assert answer["error"]
        assert h.sim.faults == Faults()

    async def test_forced_faults_hit_only_that_job(self, h: Harness) -> None:
        """The next N requests of one job fail; other jobs and later requests are normal."""
        job, other = h.sim.add_job(), h.sim.add_job()
        status, _ = await h.ctl("POST", f"/_sim/jobs/{job.id}/faults", {"kind": "rate_limit", "count": 2})
        assert status == 200
        h.sim.faults.retry_after_s = 4
        assert (await h.poll(other.id))[0] == 200
        async with h.session.get(f"{h.url}/jobs/{job.id}", headers=AUTH) as resp:
            assert (resp.status, resp.headers["Retry-After"]) == (429, "4")
        assert [(await h.poll(job.id))[0] for _ in range(2)] == [429, 200]

    async def test_faults_of_one_workspace(self, h: Harness) -> None:
        """`workspace` confines the fractional faults to that workspace's requests; stats count requests per
        workspace; an unknown workspace is refused."""
        status, answer = await h.ctl("PUT", "/_sim/faults", {"rate_limit": 1.0, "workspace": "nope"})
        assert (status, h.sim.faults) == (400, Faults())
        assert "workspace" in answer["error"]
        status, faults = await h.ctl("PUT", "/_sim/faults", {"rate_limit": 1.0, "workspace": "other"})
        assert (status, faults["workspace"]) == (200, "other")
        mine, theirs = h.sim.add_job(), h.sim.add_job(workspace="other")
        assert [(await h.poll(mine.id))[0] for _ in range(3)] == [200] * 3
        assert [(await h.poll(theirs.id, OTHER))[0] for _ in range(3)] == [429] * 3
        assert h.sim.stats()["by_workspace"] == {"sim": 3, "other": 3}

    async def test_drop_closes_the_connection(self, h: Harness) -> None:
        """A dropped request gets no HTTP answer at all."""
        job = h.sim.add_job()
        h.sim.force_fault(job.id, "drop", count=2)  # aiohttp retries a dropped idempotent request once
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await h.poll(job.id)
        assert {(r["fault"], r["status_code"]) for r in h.sim.requests(job.id)} == {("drop", None)}


class TestRequestLog:
    """Every upstream request is recorded, bounded, and summarised in stats."""

    async def test_log_entries_and_filter(self, h: Harness) -> None:
        """Entries carry job, workspace, clock times, status code and fault; ?job_id= filters."""
        job, other = h.sim.add_job(), h.sim.add_job()
        await h.poll(job.id, {**AUTH, "x-workspace-id": "ws-1"})
        await h.poll(other.id, {**AUTH, "Authorization": "Bearer bad"})
        status, log = await h.ctl("GET", f"/_sim/requests?job_id={job.id}")
        assert status == 200
        assert log["requests"] == [
            {
                "job_id": job.id,
                "workspace": "sim",
                "workspace_id": "ws-1",
                "started_at": h.clock.now(),
                "finished_at": h.clock.now(),
                "status_code": 200,
                "fault": None,
            }
        ]
        _, everything = await h.ctl("GET", "/_sim/requests")
        assert [r["status_code"] for r in everything["requests"]] == [200, 401]
        _, stats = await h.ctl("GET", "/_sim/stats")
        assert (stats["requests"], stats["by_status"]) == (2, {"200": 1, "401": 1})
        assert (await h.ctl("DELETE", "/_sim/requests"))[0] == 204
        assert h.sim.requests() == [] and h.sim.stats()["requests"] == 0

    async def test_log_is_bounded(self) -> None:
        """Only the newest max_log entries are kept; the counters keep counting."""
        sim = Simulator(max_log=3, clock=ManualClock())
        url = await sim.start()
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(5):
                    async with session.get(f"{url}/jobs/5135bfe3-b2c7-41f3-a44f-f4b58e7384df", headers=AUTH):
                        pass
        finally:
            await sim.stop()
        assert len(sim.requests()) == 3
        assert sim.stats()["by_status"] == {"404": 5}

    async def test_concurrent_polls_of_one_job_are_detected(self, h: Harness) -> None:
        """Two requests for the same job in flight at once show up as max_inflight_per_job == 2."""
        job, other = h.sim.add_job(), h.sim.add_job()
        await h.poll(other.id)
        assert h.sim.stats()["max_inflight_per_job"] == 1
        h.sim.faults = Faults(slow=1.0, slow_s=1.0)
        both = asyncio.gather(h.poll(job.id), h.poll(job.id))
        # Handlers count themselves in flight and reach the clock's sleep without awaiting in between.
        await eventually(lambda: h.sim.stats()["max_inflight_per_job"] >= 2, 10, "both polls in flight")
        await h.clock.advance(1.0)
        assert [s for s, _ in await both] == [200, 200]
        stats = h.sim.stats()
        assert (stats["max_inflight_per_job"], stats["jobs_polled_concurrently"]) == (2, [job.id])
        log = h.sim.requests(job.id)
        assert [r["finished_at"] - r["started_at"] for r in log] == [1.0, 1.0]


SIM_CMD = [
    sys.executable,
    "-c",
    "import sys; from watcher.devtools.simulate import simulate_main; sys.exit(simulate_main(sys.argv[1:]))",
]


def test_simulate_cli_serves_more_workspaces_and_confines_faults() -> None:
    """`--workspace` adds workspaces with the same credentials; `--fault-workspace` confines the faults."""
    argv = ["--workspace", "other", "--fault-rate-limit", "1", "--fault-workspace", "other"]
    sim, _, _, _ = _build(argv)
    assert sim.workspaces == {"sim", "other"}
    assert (sim.faults.rate_limit, sim.faults.workspace) == (1.0, "other")


def test_simulate_main_serves_until_sigterm(tmp_path: Any) -> None:
    """The CLI prints one listening line, serves the scenario's job, and exits 0 on SIGTERM."""
    job_id = "5135bfe3-b2c7-41f3-a44f-f4b58e7384df"
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps([{"id": job_id, "status": "active"}]))
    args = ["--port", "0", "--seed", "1", "--jobs", "3", "--scenario", str(scenario)]
    with subprocess.Popen(
        [*SIM_CMD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # bounded by the test timeout; the child prints at start-up
            event = json.loads(line)
            assert event["event"] == "listening"
            url = event["url"]

            async def fetch() -> tuple[int, Any, int]:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
                    async with s.get(f"{url}/jobs/{job_id}", headers=AUTH) as resp:
                        status, body = resp.status, await resp.json()
                    async with s.get(url.removesuffix("/api/v2") + "/_sim/jobs") as resp:
                        jobs = (await resp.json())["jobs"]
                    return status, body, len(jobs)

            status, body, count = asyncio.run(fetch())
            assert (status, body["id"], body["status"], count) == (200, job_id, "active", 4)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=15)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fault-drop", "2"], "--fault-drop"),
        (["--port", "x"], "--port"),
        (["--scenario", os.devnull + "-missing"], "--scenario"),
        (["--bogus"], "unrecognized"),
        (["--workspace", "other", "--fault-workspace", "nope"], "--fault-workspace"),
    ],
)
def test_simulate_main_bad_usage(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad arguments exit 2 with a single line naming the problem, without serving."""
    assert simulate_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err
