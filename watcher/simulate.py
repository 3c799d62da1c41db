"""A simulated Oration jobs API (SPEC §2) with scripted job lifecycles and injectable faults.

Shipped in the package for the test suites, `watcher demo`, `watcher bench` and users' own integration
tests (`watcher simulate`). It serves `GET /api/v2/jobs/{id}` with the real API's auth rules and body
shape, a control API under `/_sim/` (no auth: it is a loopback test tool), and records every upstream
request so tests can check how the daemon polled. Time comes from an injected clock, fault decisions from
an injected `random.Random`, so a test with a `ManualClock` and a seed is deterministic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import signal
import sys
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final, NamedTuple

from aiohttp import web

from watcher.clock import Clock, SystemClock, iso_utc
from watcher.models import KNOWN_STATUSES
from watcher.simulate_faults import GARBAGE_VARIANTS, POISON_VARIANTS, garbage_body, poison_body
from watcher.usage import OneLineParser, UsageError

API_PREFIX: Final = "/api/v2"
FAULT_KINDS: Final = ("server_error", "rate_limit", "garbage", "slow", "drop", "poison")
_VARIANTS: Final = {"garbage": GARBAGE_VARIANTS, "poison": POISON_VARIANTS}
_MAX_STATUS: Final = 200
_WS_NAMESPACE: Final = uuid.UUID("0b7d43f3-5b8e-4c4e-9a43-51f0d1d6a1c2")
_MAX_FLAGGED_JOBS: Final = 1000


@dataclass(slots=True)
class Faults:
    """Fractions of upstream requests that misbehave, and how; every field defaults to 0 (none)."""

    server_error: float = 0.0  # answered 500, 502 or 503
    rate_limit: float = 0.0  # answered 429 with `Retry-After: retry_after_s`
    retry_after_s: float = 0.0
    garbage: float = 0.0  # answered 200 with a body that is not a valid job (see GARBAGE_VARIANTS)
    slow: float = 0.0  # answered only after slow_s (independent of the other faults)
    slow_s: float = 0.0
    drop: float = 0.0  # connection closed without an answer
    poison: float = 0.0  # answered 200 with a valid job that lenient JSON code chokes on (POISON_VARIANTS)
    poison_variant: str = ""  # the poison to serve; "" draws one of POISON_VARIANTS per answer

    def __post_init__(self) -> None:
        if self.poison_variant not in ("", *POISON_VARIANTS):
            raise ValueError(f'poison_variant: expected one of {", ".join(POISON_VARIANTS)} or ""')
        for f in fields(self):
            if f.name == "poison_variant":
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{f.name}: expected a number, got {value!r}")
            if value < 0 or (not f.name.endswith("_s") and value > 1):
                raise ValueError(f"{f.name}: must be {'>= 0' if f.name.endswith('_s') else 'in [0, 1]'}")
            setattr(self, f.name, float(value))

    @classmethod
    def from_json(cls, data: Any) -> Faults:
        """Build from a control-API body; unknown keys are an error so typos do not go unnoticed."""
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        return cls(**data)


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


@dataclass(slots=True, frozen=True)
class _Workspace:
    slug: str
    id: str
    token: str = field(repr=False)
    api_key: str = field(repr=False)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _delta_seconds(value: float) -> str:
    # Retry-After delta-seconds: plain digits, never the exponent notation that "%g" would produce.
    # float() because tests may assign an int to a Faults field directly, bypassing __post_init__.
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.3f}"


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


class Simulator:
    """The simulated upstream: jobs, fault settings, a request log, and the aiohttp app serving them.

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
        self._workspaces: dict[str, _Workspace] = {}
        self._auth: dict[tuple[str, str], set[str]] = {}
        for slug, (tok, key) in {workspace_slug: (token, api_key), **(workspaces or {})}.items():
            ws = _Workspace(slug, str(uuid.uuid5(_WS_NAMESPACE, slug)), tok, key)
            self._workspaces[slug] = ws
            self._auth.setdefault((tok, key), set()).add(slug)
        self.jobs: dict[str, SimJob] = {}
        self._log: deque[dict[str, Any]] = deque(maxlen=max_log)
        self._by_status: Counter[str] = Counter()
        self._by_fault: Counter[str] = Counter()
        self._inflight: dict[str, int] = {}
        self._max_inflight = 0
        self._concurrent_jobs: set[str] = set()
        self._shutdown_timeout_s = shutdown_timeout_s
        self._runner: web.AppRunner | None = None
        # `watcher bench`: any UUID not created through the control API answers as a job in this status,
        # so a million watches need no million control calls. None (the default): such ids are 404.
        if unknown_jobs is not None and unknown_jobs not in KNOWN_STATUSES:
            raise ValueError(f"unknown_jobs: expected one of {', '.join(sorted(KNOWN_STATUSES))}")
        self.unknown_jobs = unknown_jobs
        self._started_at = self.clock.now()

    def __repr__(self) -> str:
        return f"Simulator(workspaces={sorted(self._workspaces)!r}, jobs={len(self.jobs)})"

    def workspace_id(self, slug: str) -> str:
        """The `workspaceId` the simulator reports for jobs of workspace `slug`."""
        return self._workspaces[slug].id

    # -- jobs ---------------------------------------------------------------------------------------

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
        allowed = {"id", "status", "name", "workspace", "error", "visible_after_s", "script"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"job spec: unknown keys {', '.join(sorted(unknown))}")
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
            "workspaceId": self._workspaces[job.workspace].id,
        }

    # -- request log --------------------------------------------------------------------------------

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
        self._max_inflight = 0
        self._concurrent_jobs.clear()

    def stats(self) -> dict[str, Any]:
        """Counts by status code and fault, and the most requests ever in flight for one job at once."""
        return {
            "requests": sum(self._by_status.values()),
            "by_status": dict(self._by_status),
            "by_fault": dict(self._by_fault),
            "max_inflight_per_job": self._max_inflight,
            "jobs_polled_concurrently": sorted(self._concurrent_jobs),
        }

    # -- upstream route -----------------------------------------------------------------------------

    def _authorize(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth[:7].lower() == "bearer " else ""
        slugs = self._auth.get((token, request.headers.get("x-api-key", "")))
        if slugs is None:
            return _error(401, "invalid or missing bearer token or api key")
        if request.headers.get("x-workspace-slug") not in slugs:
            return _error(403, "credentials are not valid for this workspace")
        return None

    def _draw(self, job: SimJob | None) -> tuple[str | None, bool, str | None]:
        """The fault for this request, whether it is also slow, and its body variant if forced."""
        if job is not None and job.forced:
            kind, variant = job.forced.popleft()
            return kind, kind == "slow", variant
        f = self.faults
        slow = f.slow > 0 and self.rng.random() < f.slow
        if f.drop + f.server_error + f.rate_limit + f.garbage + f.poison > 0:
            # One draw over adjacent ranges, so each fraction is honoured exactly as configured.
            u = self.rng.random()
            for kind, fraction in (("drop", f.drop), ("server_error", f.server_error),
                                   ("rate_limit", f.rate_limit), ("garbage", f.garbage),
                                   ("poison", f.poison)):  # fmt: skip
                if u < fraction:
                    return kind, slow, None
                u -= fraction
        return ("slow" if slow else None), slow, None

    async def _upstream(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["id"].lower()
        started = self.clock.now()
        inflight = self._inflight.get(key, 0) + 1
        self._inflight[key] = inflight
        if inflight > 1 and len(self._concurrent_jobs) < _MAX_FLAGGED_JOBS:
            self._concurrent_jobs.add(key)
        self._max_inflight = max(self._max_inflight, inflight)
        code: int | None = None
        fault: str | None = None
        try:
            denied = self._authorize(request)
            if denied is not None:
                code = denied.status
                return denied
            job = self.jobs.get(key)
            if job is not None and job.workspace != request.headers["x-workspace-slug"]:
                job = None  # another workspace's job is as invisible as a job that does not exist
            fault, slow, variant = self._draw(job)
            if slow and self.faults.slow_s > 0:
                await self.clock.sleep(self.faults.slow_s)
            response = self._answer(request, key, job, fault, variant)
            code = None if fault == "drop" else response.status
            return response
        finally:
            self._leave(key)
            self._by_status[str(code) if code is not None else "none"] += 1
            self._by_fault[fault or "none"] += 1
            self._log.append({
                "job_id": key,
                "workspace": request.headers.get("x-workspace-slug"),
                "workspace_id": request.headers.get("x-workspace-id"),
                "started_at": started,
                "finished_at": self.clock.now(),
                "status_code": code,
                "fault": fault,
            })  # fmt: skip

    def _leave(self, key: str) -> None:
        left = self._inflight[key] - 1
        if left:
            self._inflight[key] = left
        else:
            del self._inflight[key]

    def _answer(
        self, request: web.Request, key: str, job: SimJob | None, fault: str | None, variant: str | None
    ) -> web.Response:
        if fault == "drop":
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=502)  # never reaches the client: the connection is gone
        if fault == "server_error":
            code = self.rng.choice((500, 502, 503))
            headers = {"Retry-After": _delta_seconds(self.faults.retry_after_s)} if code == 503 else None
            return web.json_response({"error": "internal error"}, status=code, headers=headers)
        if fault == "rate_limit":
            return web.json_response(
                {"error": "rate limited"},
                status=429,
                headers={"Retry-After": _delta_seconds(self.faults.retry_after_s)},
            )
        now = self.clock.now()
        if job is not None:
            job.advance(now)
        if fault == "garbage":
            return self._garbage(job, key, variant or self.rng.choice(GARBAGE_VARIANTS))
        if fault == "poison":
            chosen = variant or self.faults.poison_variant or self.rng.choice(POISON_VARIANTS)
            view = self.job_view(job) if job is not None else {"id": key, "status": "queued"}
            if "updatedAt" not in view:
                view["updatedAt"] = iso_utc(now)
            return web.Response(body=poison_body(view, chosen), content_type="application/json")
        if job is None and self.unknown_jobs is not None:
            return self._unknown_job(request, key)
        if job is None or now < job.visible_at:
            return _error(404, "job not found")
        return web.Response(body=json.dumps(self.job_view(job)).encode(), content_type="application/json")

    def _unknown_job(self, request: web.Request, key: str) -> web.Response:
        """An id nobody created, in `unknown_jobs` mode: a job that never changes (404 if not a UUID)."""
        try:
            uuid.UUID(key)
        except ValueError:
            return _error(404, "job not found")
        since = iso_utc(self._started_at)
        view = {
            "id": key,
            "createdAt": since,
            "updatedAt": since,
            "jobProviderId": key,
            "name": "bench.job",
            "status": self.unknown_jobs,
            "error": None,
            "workspaceId": self._workspaces[request.headers["x-workspace-slug"]].id,
        }
        return web.Response(body=json.dumps(view).encode(), content_type="application/json")

    def _garbage(self, job: SimJob | None, key: str, variant: str) -> web.Response:
        view: dict[str, Any] = self.job_view(job) if job is not None else {"id": key, "status": "queued"}

        def new_id() -> str:
            return str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))

        text, content_type = garbage_body(view, variant, new_id)
        return web.Response(text=text, content_type=content_type)

    # -- control API and lifecycle ------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """The aiohttp application serving the upstream route and the `/_sim/` control API."""
        app = web.Application()
        app.router.add_get(API_PREFIX + "/jobs/{id}", self._upstream)
        ctl = _Control(self)
        app.router.add_get("/_sim/jobs", ctl.list_jobs)
        app.router.add_post("/_sim/jobs", ctl.create_job)
        app.router.add_post("/_sim/jobs/{id}", ctl.move_job)
        app.router.add_delete("/_sim/jobs/{id}", ctl.delete_job)
        app.router.add_post("/_sim/jobs/{id}/faults", ctl.force_fault)
        app.router.add_get("/_sim/faults", ctl.get_faults)
        app.router.add_put("/_sim/faults", ctl.put_faults)
        app.router.add_get("/_sim/requests", ctl.get_requests)
        app.router.add_delete("/_sim/requests", ctl.delete_requests)
        app.router.add_get("/_sim/stats", ctl.get_stats)
        return app

    @property
    def url(self) -> str | None:
        """The base URL (e.g. http://127.0.0.1:PORT/api/v2) once started, else None."""
        if self._runner is None or not self._runner.addresses:
            return None
        bound_host, bound_port = self._runner.addresses[0][:2]
        netloc = f"[{bound_host}]" if ":" in bound_host else bound_host
        return f"http://{netloc}:{bound_port}{API_PREFIX}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0 = any free port) and return the base URL, e.g. http://127.0.0.1:PORT/api/v2."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        # handler_cancellation: a client that gives up on a slow answer frees its handler at once.
        runner = web.AppRunner(
            self.build_app(),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=self._shutdown_timeout_s,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        url = self.url
        if url is None:
            raise RuntimeError("simulator started but reports no listening address")
        return url

    async def stop(self) -> None:
        """Stop serving; in-flight requests get `shutdown_timeout_s` to finish."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


class _Control:
    """Handlers of the `/_sim/` control API; bad input is a 400 naming the field, never a 500."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def _view(self, job: SimJob) -> dict[str, Any]:
        job.advance(self.sim.clock.now())
        return {**self.sim.job_view(job), "workspace": job.workspace}

    @staticmethod
    async def _body(request: web.Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "body is not JSON"}), content_type="application/json"
            ) from None

    async def list_jobs(self, request: web.Request) -> web.Response:
        return _json({"jobs": [self._view(job) for job in self.sim.jobs.values()]})

    async def create_job(self, request: web.Request) -> web.Response:
        try:
            job = self.sim.add_job_spec(await self._body(request))
        except KeyError:
            return _error(409, "a job with this id exists")
        except ValueError as exc:
            return _error(400, str(exc))
        return _json(self._view(job), status=201)

    async def move_job(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict) or (
            body.get("error") is not None and not isinstance(body["error"], str)
        ):
            return _error(400, "expected {status, error?}")
        try:
            job = self.sim.set_status(request.match_info["id"], str(body.get("status")), body.get("error"))
        except KeyError:
            return _error(404, "job not found")
        except ValueError as exc:
            return _error(400, str(exc))
        return _json(self._view(job))

    async def delete_job(self, request: web.Request) -> web.Response:
        if self.sim.jobs.pop(request.match_info["id"].lower(), None) is None:
            return _error(404, "job not found")
        return web.Response(status=204)

    async def force_fault(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            return _error(400, "expected {kind, count?, variant?}")
        try:
            self.sim.force_fault(
                request.match_info["id"], str(body.get("kind")), body.get("count", 1), body.get("variant")
            )
        except KeyError:
            return _error(404, "job not found")
        except ValueError as exc:
            return _error(400, str(exc))
        return _json({"forced": len(self.sim.jobs[request.match_info["id"].lower()].forced)})

    async def get_faults(self, request: web.Request) -> web.Response:
        return _json(asdict(self.sim.faults))

    async def put_faults(self, request: web.Request) -> web.Response:
        try:
            self.sim.faults = Faults.from_json(await self._body(request))
        except (TypeError, ValueError) as exc:
            return _error(400, str(exc))
        return _json(asdict(self.sim.faults))

    async def get_requests(self, request: web.Request) -> web.Response:
        return _json({"requests": self.sim.requests(request.query.get("job_id"))})

    async def delete_requests(self, request: web.Request) -> web.Response:
        self.sim.clear_requests()
        return web.Response(status=204)

    async def get_stats(self, request: web.Request) -> web.Response:
        return _json(self.sim.stats())


# -- `watcher simulate` -----------------------------------------------------------------------------


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


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1]")
    return value


def _parser() -> OneLineParser:
    p = OneLineParser(
        prog="watcher simulate",
        description="Serve a simulated Oration jobs API. The default credentials are throwaway values "
        "for local testing only.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081, help="0 picks a free port (default 8081)")
    p.add_argument("--token", default="sim-token", help="bearer token clients must send (local testing)")
    p.add_argument("--api-key", default="sim-key", help="x-api-key clients must send (local testing)")
    p.add_argument("--workspace-slug", default="sim", help="x-workspace-slug clients must send")
    p.add_argument("--seed", type=int, default=None, help="seed for faults and generated jobs")
    for name in ("server-error", "rate-limit", "garbage", "slow", "drop", "poison"):
        p.add_argument(f"--fault-{name}", type=_fraction, default=0.0, metavar="FRACTION")
    p.add_argument(
        "--poison-variant",
        choices=POISON_VARIANTS,
        default="",
        help="the poison body of --fault-poison answers (default: any of them, drawn per answer)",
    )
    p.add_argument("--retry-after-s", type=float, default=1.0, help="Retry-After of 429 and 503 answers")
    p.add_argument("--slow-s", type=float, default=5.0, help="delay of slow answers")
    p.add_argument("--jobs", type=int, default=0, metavar="N", help="create N jobs with random lifecycles")
    p.add_argument("--scenario", metavar="FILE", help="JSON list of job specs, as for POST /_sim/jobs")
    p.add_argument(
        "--unknown-jobs",
        metavar="STATUS",
        choices=sorted(KNOWN_STATUSES),
        help="answer any UUID not created through /_sim/ as a job stuck in STATUS (load tests; default 404)",
    )
    p.add_argument("--max-log", type=int, default=100_000, metavar="N", help="requests kept in the log")
    return p


def _build(argv: list[str]) -> tuple[Simulator, str, int]:
    """Parse the command line into a ready simulator; raises UsageError with a one-line reason."""
    args = _parser().parse_args(argv)
    if args.jobs < 0 or not 0 <= args.port <= 65535:
        raise UsageError("--jobs must be >= 0 and --port in 0..65535")
    try:
        faults = Faults(
            server_error=args.fault_server_error,
            rate_limit=args.fault_rate_limit,
            retry_after_s=args.retry_after_s,
            garbage=args.fault_garbage,
            slow=args.fault_slow,
            slow_s=args.slow_s,
            drop=args.fault_drop,
            poison=args.fault_poison,
            poison_variant=args.poison_variant,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    rng = random.Random(args.seed)
    if args.max_log < 0:
        raise UsageError("--max-log must be >= 0")
    sim = Simulator(
        token=args.token,
        api_key=args.api_key,
        workspace_slug=args.workspace_slug,
        rng=rng,
        faults=faults,
        unknown_jobs=args.unknown_jobs,
        max_log=args.max_log,
    )
    specs: Any = []
    if args.scenario:
        try:
            with open(args.scenario, encoding="utf-8") as fh:
                specs = json.load(fh)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--scenario {args.scenario}: {exc}") from None
        if not isinstance(specs, list):
            raise UsageError(f"--scenario {args.scenario}: expected a JSON list of job specs")
    for i, spec in enumerate(specs):
        try:
            sim.add_job_spec(spec)
        except (KeyError, ValueError) as exc:
            raise UsageError(f"--scenario {args.scenario}: job {i}: {exc}") from None
    for _ in range(args.jobs):
        sim.add_job(script=random_script(rng))
    return sim, args.host, args.port


async def _serve(sim: Simulator, host: str, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before binding so that a SIGTERM right after the "listening" line still exits cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        url = await sim.start(host, port)
        print(json.dumps({"event": "listening", "url": url}), flush=True)
        await stop.wait()
    finally:
        await sim.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def simulate_main(argv: list[str]) -> int:
    """Entry point of `watcher simulate`: 0 after SIGINT/SIGTERM, 2 on bad usage, 1 if it cannot serve."""
    try:
        sim, host, port = _build(argv)
    except UsageError as exc:
        print(f"watcher simulate: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return asyncio.run(_serve(sim, host, port))
    except OSError as exc:
        print(f"watcher simulate: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
