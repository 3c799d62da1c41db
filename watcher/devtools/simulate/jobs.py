"""The simulated upstream's state: workspaces and their credentials, jobs with scripted lifecycles, the fault
settings and the request log. What the server (`server`) answers from and the control API (`control`)
changes; time comes from an injected clock, randomness from an injected `random.Random`.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from aiohttp import web

from watcher.clock import Clock, SystemClock, iso_utc
from watcher.devtools.simulate.faults import FAULT_KINDS, GARBAGE_VARIANTS, POISON_VARIANTS, Faults
from watcher.models import KNOWN_STATUSES
from watcher.polling.adaptive.sim import JobType

_VARIANTS: Final = {"garbage": GARBAGE_VARIANTS, "poison": POISON_VARIANTS}
_MAX_STATUS: Final = 200
_WS_NAMESPACE: Final = uuid.UUID("0b7d43f3-5b8e-4c4e-9a43-51f0d1d6a1c2")


def json_response(data: Any, status: int = 200) -> web.Response:
    """`data` as a JSON answer."""
    return web.json_response(data, status=status)


def error_response(status: int, message: str) -> web.Response:
    """`{"error": message}` with `status`."""
    return web.json_response({"error": message}, status=status)


class Step(NamedTuple):
    """One scripted status change, `after_s` seconds after the job was created."""

    after_s: float
    status: str
    error: str | None = None


@dataclass(slots=True)
class SimJob:
    """A job as the simulated upstream knows it."""

    id: str
    workspace: str
    name: str
    status: str
    error: str | None
    created_at: float
    updated_at: float
    provider_id: str
    visible_at: float
    script: deque[Step] = field(default_factory=deque)  # steps not yet reached, in time order
    forced: deque[tuple[str, str | None]] = field(default_factory=deque)  # (fault kind, garbage variant)

    def advance(self, now: float) -> None:
        """Apply every scripted step whose time has come; the clock is read lazily, per request."""
        while self.script and self.created_at + self.script[0].after_s <= now:
            step = self.script.popleft()
            self.move(step.status, step.error, self.created_at + step.after_s)

    def move(self, status: str, error: str | None, at: float) -> None:
        """Set the status; `updatedAt` moves (strictly, at ms resolution) only when something changed."""
        if status != self.status or error != self.error:
            self.status, self.error = status, error
            self.updated_at = max(at, self.updated_at + 0.001)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a number >= 0")
    return float(value)


def _status(value: Any, name: str) -> str:
    # Any status, not only the documented ones: a grown upstream (`cancelled`, `CANCELLED`) is something
    # users need to reproduce (SPEC §2).
    if not isinstance(value, str) or not value or len(value) > _MAX_STATUS:
        raise ValueError(f"{name}: expected a status, a non-empty string of at most {_MAX_STATUS} characters")
    return value


def _parse_step(raw: Any, index: int) -> Step:
    if isinstance(raw, Step):
        return raw
    if isinstance(raw, dict):
        raw = (raw.get("after_s"), raw.get("status"), raw.get("error"))
    if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) not in (2, 3):
        raise ValueError(f"script[{index}]: expected {{after_s, status, error?}}")
    error = raw[2] if len(raw) == 3 else None
    if error is not None and not isinstance(error, str):
        raise ValueError(f"script[{index}].error: expected a string or null")
    return Step(
        _number(raw[0], f"script[{index}].after_s"), _status(raw[1], f"script[{index}].status"), error
    )


def random_script(rng: random.Random) -> list[Step]:
    """A live-looking lifecycle: queued, active, maybe a retry, then success (mostly) or failed.

    Phase lengths are log-normal, like real job durations: mostly short, with a long tail.
    """
    t = rng.lognormvariate(math.log(1.0), 0.75)
    steps = [Step(t, "active")]
    if rng.random() < 0.2:
        t += rng.lognormvariate(math.log(3.0), 0.75)
        steps.append(Step(t, "retrying", "worker lost; retrying"))
        t += rng.lognormvariate(math.log(2.0), 0.5)
        steps.append(Step(t, "active"))
    t += rng.lognormvariate(math.log(10.0), 0.8)
    steps.append(Step(t, "success") if rng.random() < 0.85 else Step(t, "failed", "simulated failure"))
    return steps


class SimState:
    """The simulated upstream without its HTTP server: jobs, fault settings, a request log.

    Credentials default to the throwaway values `sim-token` / `sim-key` / workspace `sim`, meant only
    for local testing; `workspaces` adds more as `{slug: (token, api_key)}`.
    """

    def __init__(
        self,
        *,
        token: str = "sim-token",  # noqa: S107 -- a documented throwaway value for local testing
        api_key: str = "sim-key",
        workspace_slug: str = "sim",
        workspaces: Mapping[str, tuple[str, str]] | None = None,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        faults: Faults | None = None,
        max_log: int = 100_000,
        shutdown_timeout_s: float = 2.0,
        unknown_jobs: str | None = None,
    ) -> None:
        self.rng = rng if rng is not None else random.Random(0)
        # Ids come from their own stream so that creating jobs does not shift the fault sequence.
        self._id_rng = random.Random(self.rng.getrandbits(64))
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.faults = faults if faults is not None else Faults()
        self.default_workspace = workspace_slug
        self._workspaces: dict[str, str] = {}  # slug -> the workspaceId it reports
        self._auth: dict[tuple[str, str], set[str]] = {}  # (token, api key) -> the slugs they open
        for slug, (tok, key) in {workspace_slug: (token, api_key), **(workspaces or {})}.items():
            self._workspaces[slug] = str(uuid.uuid5(_WS_NAMESPACE, slug))
            self._auth.setdefault((tok, key), set()).add(slug)
        self.jobs: dict[str, SimJob] = {}
        self._log: deque[dict[str, Any]] = deque(maxlen=max_log)
        self._by_status: Counter[str] = Counter()
        self._by_fault: Counter[str] = Counter()
        self._by_workspace: Counter[str] = Counter()
        self._inflight: dict[str, int] = {}
        self._max_inflight = 0
        self._concurrent_jobs: set[str] = set()
        self._shutdown_timeout_s = shutdown_timeout_s  # what a stopping server gives requests in flight
        # `watcher bench`: any UUID not created through the control API answers as a job in this status,
        # so a million watches need no million control calls. None (the default): such ids are 404.
        if unknown_jobs is not None and unknown_jobs not in KNOWN_STATUSES:
            raise ValueError(f"unknown_jobs: expected one of {', '.join(sorted(KNOWN_STATUSES))}")
        self.unknown_jobs = unknown_jobs
        self._started_at = self.clock.now()
        # `--scenario` job types (`jobtypes`): a spec {"type": NAME} draws its duration from its own stream.
        self.job_types: dict[str, JobType] = {}
        self.time_scale = 1.0
        self._duration_rng = random.Random(self.rng.getrandbits(64))

    def __repr__(self) -> str:
        return f"Simulator(workspaces={sorted(self._workspaces)!r}, jobs={len(self.jobs)})"

    @property
    def workspaces(self) -> frozenset[str]:
        """The slugs of the workspaces the simulator serves."""
        return frozenset(self._workspaces)

    def workspace_id(self, slug: str) -> str:
        """The `workspaceId` the simulator reports for jobs of workspace `slug`."""
        return self._workspaces[slug]

    def add_job(
        self,
        job_id: str | None = None,
        *,
        status: str = "queued",
        name: str = "customer.createBatch",
        workspace: str | None = None,
        error: str | None = None,
        visible_after_s: float = 0.0,
        script: Iterable[Step | Sequence[Any] | Mapping[str, Any]] = (),
    ) -> SimJob:
        """Create a job now; raises ValueError on a bad id, status, workspace or script."""
        ws = workspace if workspace is not None else self.default_workspace
        if ws not in self._workspaces:
            raise ValueError(f"workspace: unknown workspace {ws!r}")
        if job_id is None:
            key = str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))
        else:
            try:
                key = str(uuid.UUID(str(job_id)))
            except ValueError:
                raise ValueError(f"id: not a UUID: {job_id!r}") from None
        if key in self.jobs:
            raise KeyError(key)
        steps = sorted((_parse_step(raw, i) for i, raw in enumerate(script)), key=lambda s: s.after_s)
        now = self.clock.now()
        job = SimJob(
            id=key,
            workspace=ws,
            name=str(name),
            status=_status(status, "status"),
            error=error,
            created_at=now,
            updated_at=now,
            provider_id=str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4)),
            visible_at=now + _number(visible_after_s, "visible_after_s"),
            script=deque(steps),
        )
        job.advance(now)
        self.jobs[key] = job
        return job

    def add_job_spec(self, spec: Any) -> SimJob:
        """Create a job from a JSON spec as accepted by `POST /_sim/jobs` and `--scenario`."""
        if not isinstance(spec, dict):
            raise ValueError("job spec: expected a JSON object")
        allowed = {"id", "status", "name", "workspace", "error", "visible_after_s", "script", "type"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"job spec: unknown keys {', '.join(sorted(unknown))}")
        if "type" in spec:
            spec = self._typed(spec)
        script = spec.get("script") or []
        if not isinstance(script, list):
            raise ValueError("script: expected a list")
        error = spec.get("error")
        if error is not None and not isinstance(error, str):
            raise ValueError("error: expected a string or null")
        return self.add_job(
            spec.get("id"),
            status=spec.get("status", "queued"),
            name=spec.get("name", "customer.createBatch"),
            workspace=spec.get("workspace"),
            error=error,
            visible_after_s=spec.get("visible_after_s", 0.0),
            script=script,
        )

    def _typed(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A spec of a scenario job type: that name, active, successful after a duration drawn from it."""
        job_type = self.job_types.get(spec["type"]) if isinstance(spec["type"], str) else None
        if job_type is None:
            raise ValueError(f"type: expected one of the scenario's types ({', '.join(self.job_types)})")
        duration = job_type.sample(self._duration_rng) / self.time_scale
        typed = {"name": job_type.name, "status": "active", "script": [[duration, "success"]]}
        return {**typed, **{k: v for k, v in spec.items() if k != "type"}}

    def set_status(self, job_id: str, status: str, error: str | None = None) -> SimJob:
        """Move a job to `status` now (after applying its script so far); KeyError if unknown."""
        job = self.jobs[job_id.lower()]
        now = self.clock.now()
        job.advance(now)
        job.move(_status(status, "status"), error, now)
        return job

    def force_fault(self, job_id: str, kind: str, count: int = 1, variant: str | None = None) -> None:
        """Make the next `count` requests for this job fail with `kind`, whatever the fractions say."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind: expected one of {', '.join(FAULT_KINDS)}")
        if variant is not None and variant not in _VARIANTS.get(kind, ()):
            known = ", ".join(_VARIANTS.get(kind, ())) or f"none for {kind}"
            raise ValueError(f"variant: expected one of {known}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError("count: expected an integer >= 0")
        self.jobs[job_id.lower()].forced.extend([(kind, variant)] * count)

    def job_view(self, job: SimJob) -> dict[str, Any]:
        """The job exactly as the upstream API returns it (SPEC §2)."""
        return {
            "id": job.id,
            "createdAt": iso_utc(job.created_at),
            "updatedAt": iso_utc(job.updated_at),
            "jobProviderId": job.provider_id,
            "name": job.name,
            "status": job.status,
            "error": job.error,
            "workspaceId": self._workspaces[job.workspace],
        }

    def requests(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """The recorded upstream requests, oldest first, optionally for one job."""
        if job_id is None:
            return list(self._log)
        key = job_id.lower()
        return [r for r in self._log if r["job_id"] == key]

    def clear_requests(self) -> None:
        """Forget the request log and the statistics."""
        self._log.clear()
        self._by_status.clear()
        self._by_fault.clear()
        self._by_workspace.clear()
        self._max_inflight = 0
        self._concurrent_jobs.clear()

    def stats(self) -> dict[str, Any]:
        """Counts by status code, fault and workspace (authorised requests), the requests in flight now, and
        the most ever in flight for one job at once."""
        return {
            "requests": sum(self._by_status.values()),
            "inflight": sum(self._inflight.values()),
            "by_status": dict(self._by_status),
            "by_fault": dict(self._by_fault),
            "by_workspace": dict(self._by_workspace),
            "max_inflight_per_job": self._max_inflight,
            "jobs_polled_concurrently": sorted(self._concurrent_jobs),
        }
