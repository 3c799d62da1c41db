"""The `/v1/job-types` handler (SPEC §12): what the daemon learnt about how long each job type takes."""

from __future__ import annotations

from aiohttp import web

from watcher.http.clients import client_of
from watcher.http.state import STATE_KEY
from watcher.http.v1.models import JobTypeOut, JobTypesOut
from watcher.http.v1.views import ok


async def list_job_types(request: web.Request) -> web.Response:
    """Every learnt job type of the client's workspaces with its samples and duration quantiles (seconds)."""
    client = client_of(request)
    rows = [r for r in request.app[STATE_KEY].job_types() if client.sees(str(r["workspace"]))]
    return ok(JobTypesOut(items=[JobTypeOut.model_validate(r) for r in rows]))
