"""The simulator's control API under `/_sim/` (no auth: a loopback test tool): create, move and delete jobs,
force faults, set fault fractions, read and clear the request log. Bad input is a 400 naming the field."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from aiohttp import web

from watcher.devtools.simulate.faults import Faults
from watcher.devtools.simulate.jobs import SimJob, SimState, error_response, json_response


def add_control_routes(app: web.Application, sim: SimState) -> None:
    """Register the `/_sim/` routes of `sim` on `app`."""
    ctl = _Control(sim)
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


class _Control:
    """Handlers of the `/_sim/` control API; bad input is a 400 naming the field, never a 500."""

    def __init__(self, sim: SimState) -> None:
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
        return json_response({"jobs": [self._view(job) for job in self.sim.jobs.values()]})

    async def create_job(self, request: web.Request) -> web.Response:
        try:
            job = self.sim.add_job_spec(await self._body(request))
        except KeyError:
            return error_response(409, "a job with this id exists")
        except ValueError as exc:
            return error_response(400, str(exc))
        return json_response(self._view(job), status=201)

    async def move_job(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict) or (
            body.get("error") is not None and not isinstance(body["error"], str)
        ):
            return error_response(400, "expected {status, error?}")
        try:
            job = self.sim.set_status(request.match_info["id"], str(body.get("status")), body.get("error"))
        except KeyError:
            return error_response(404, "job not found")
        except ValueError as exc:
            return error_response(400, str(exc))
        return json_response(self._view(job))

    async def delete_job(self, request: web.Request) -> web.Response:
        if self.sim.jobs.pop(request.match_info["id"].lower(), None) is None:
            return error_response(404, "job not found")
        return web.Response(status=204)

    async def force_fault(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not isinstance(body, dict):
            return error_response(400, "expected {kind, count?, variant?}")
        try:
            self.sim.force_fault(
                request.match_info["id"], str(body.get("kind")), body.get("count", 1), body.get("variant")
            )
        except KeyError:
            return error_response(404, "job not found")
        except ValueError as exc:
            return error_response(400, str(exc))
        return json_response({"forced": len(self.sim.jobs[request.match_info["id"].lower()].forced)})

    async def get_faults(self, request: web.Request) -> web.Response:
        return json_response(asdict(self.sim.faults))

    async def put_faults(self, request: web.Request) -> web.Response:
        try:
            faults = Faults.from_json(await self._body(request))
        except (TypeError, ValueError) as exc:
            return error_response(400, str(exc))
        if faults.workspace and faults.workspace not in self.sim.workspaces:
            return error_response(400, f"workspace: unknown workspace {faults.workspace[:64]!r}")
        self.sim.faults = faults
        return json_response(asdict(self.sim.faults))

    async def get_requests(self, request: web.Request) -> web.Response:
        return json_response({"requests": self.sim.requests(request.query.get("job_id"))})

    async def delete_requests(self, request: web.Request) -> web.Response:
        self.sim.clear_requests()
        return web.Response(status=204)

    async def get_stats(self, request: web.Request) -> web.Response:
        return json_response(self.sim.stats())
