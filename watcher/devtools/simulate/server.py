"""The simulated Oration jobs API (SPEC §2): `GET /api/v2/jobs/{id}` with the real API's auth rules and body
shape, its faults injected, every request recorded, and the `/_sim/` control API beside it (`control`).

Shipped in the package for the test suites, `watcher demo`, `watcher bench` and users' own integration
tests (`watcher simulate`). Time comes from an injected clock, fault decisions from an injected
`random.Random`, so a test with a `ManualClock` and a seed is deterministic.
"""

from __future__ import annotations

import json
import ssl
import uuid
from typing import Any, Final

from aiohttp import web

from watcher.clock import iso_utc
from watcher.devtools.simulate.control import add_control_routes
from watcher.devtools.simulate.faults import (
    GARBAGE_VARIANTS,
    POISON_VARIANTS,
    garbage_body,
    poison_body,
)
from watcher.devtools.simulate.jobs import SimJob, SimState, error_response

API_PREFIX: Final = "/api/v2"
_MAX_FLAGGED_JOBS: Final = 1000


def _delta_seconds(value: float) -> str:
    # Retry-After delta-seconds: plain digits, never the exponent notation that "%g" would produce.
    # float() because tests may assign an int to a Faults field directly, bypassing __post_init__.
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.3f}"


class Simulator(SimState):
    """The simulated upstream and the aiohttp app serving it (`start`, `url`, `stop`)."""

    _runner: web.AppRunner | None = None
    _scheme = "http"  # "https" once started with an SSL context

    def _authorize(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth[:7].lower() == "bearer " else ""
        slugs = self._auth.get((token, request.headers.get("x-api-key", "")))
        if slugs is None:
            return error_response(401, "invalid or missing bearer token or api key")
        if request.headers.get("x-workspace-slug") not in slugs:
            return error_response(403, "credentials are not valid for this workspace")
        return None

    def _draw(self, job: SimJob | None, workspace: str) -> tuple[str | None, bool, str | None]:
        """The fault for this request, whether it is also slow, and its body variant if forced."""
        if job is not None and job.forced:
            kind, variant = job.forced.popleft()
            return kind, kind == "slow", variant
        f = self.faults
        if f.workspace and f.workspace != workspace:
            return None, False, None
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
            workspace = request.headers["x-workspace-slug"]
            self._by_workspace[workspace] += 1
            job = self.jobs.get(key)
            if job is not None and job.workspace != workspace:
                job = None  # another workspace's job is as invisible as a job that does not exist
            fault, slow, variant = self._draw(job, workspace)
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
            return error_response(404, "job not found")
        return web.Response(body=json.dumps(self.job_view(job)).encode(), content_type="application/json")

    def _unknown_job(self, request: web.Request, key: str) -> web.Response:
        """An id nobody created, in `unknown_jobs` mode: a job that never changes (404 if not a UUID)."""
        try:
            uuid.UUID(key)
        except ValueError:
            return error_response(404, "job not found")
        since = iso_utc(self._started_at)
        view = {
            "id": key,
            "createdAt": since,
            "updatedAt": since,
            "jobProviderId": key,
            "name": "bench.job",
            "status": self.unknown_jobs,
            "error": None,
            "workspaceId": self._workspaces[request.headers["x-workspace-slug"]],
        }
        return web.Response(body=json.dumps(view).encode(), content_type="application/json")

    def _garbage(self, job: SimJob | None, key: str, variant: str) -> web.Response:
        view: dict[str, Any] = self.job_view(job) if job is not None else {"id": key, "status": "queued"}

        def new_id() -> str:
            return str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))

        text, content_type = garbage_body(view, variant, new_id)
        return web.Response(text=text, content_type=content_type)

    def build_app(self) -> web.Application:
        """The aiohttp application serving the upstream route and the `/_sim/` control API."""
        app = web.Application()
        app.router.add_get(API_PREFIX + "/jobs/{id}", self._upstream)
        add_control_routes(app, self)
        return app

    @property
    def url(self) -> str | None:
        """The base URL (e.g. http://127.0.0.1:PORT/api/v2) once started, else None."""
        if self._runner is None or not self._runner.addresses:
            return None
        bound_host, bound_port = self._runner.addresses[0][:2]
        netloc = f"[{bound_host}]" if ":" in bound_host else bound_host
        return f"{self._scheme}://{netloc}:{bound_port}{API_PREFIX}"

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Serve on host:port (0 = any free port; HTTPS with `ssl_context`) and return the base URL, e.g.
        http://127.0.0.1:PORT/api/v2."""
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
            await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._scheme = "http" if ssl_context is None else "https"
        url = self.url
        if url is None:
            raise RuntimeError("simulator started but reports no listening address")
        return url

    async def stop(self) -> None:
        """Stop serving; in-flight requests get `shutdown_timeout_s` to finish."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
