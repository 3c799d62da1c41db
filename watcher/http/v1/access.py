"""What an API client may see and change (SPEC §14), and the store's capacity for new watches.

A client limited to some workspaces gets 404 for a watch or delivery of another workspace (it cannot
tell such a watch from one that does not exist), and 403 when it registers a job in another workspace
(or one already watched there). `[api] max_watches` bounds the unfinished watches: past it, registering
is 507.
"""

from __future__ import annotations

from aiohttp import web

from watcher.http.clients import client_of
from watcher.http.problems import Problem
from watcher.http.state import STATE_KEY
from watcher.models import Registration, Watch


async def visible_watch(request: web.Request, job_id: str) -> Watch:
    """The watch of `job_id` if the request's client may see it; else a 404 problem."""
    watch = await request.app[STATE_KEY].store.get_watch(job_id)
    if watch is None or not client_of(request).sees(watch.workspace):
        raise Problem(404, f"job {job_id} is not watched")
    return watch


async def require_visible(request: web.Request, job_id: str) -> None:
    """A 404 problem if the watch of `job_id` belongs to a workspace the request's client is not given
    (no store read for a client that sees every workspace: the caller's own 404 covers a missing watch)."""
    if client_of(request).workspaces is not None:
        await visible_watch(request, job_id)


async def refuse_registration(request: web.Request, reg: Registration) -> str | None:
    """Why the request's client may not register `reg` (None: it may)."""
    client = client_of(request)
    if not client.sees(reg.workspace):
        return f"client {client.name} may not register watches in workspace {reg.workspace}"
    if client.workspaces is not None:
        existing = await request.app[STATE_KEY].store.get_watch(reg.job_id)
        if existing is not None and not client.sees(existing.workspace):
            return f"job {reg.job_id} is watched in a workspace client {client.name} may not use"
    return None


def check_capacity(request: web.Request, adding: int) -> None:
    """A 507 problem if `adding` more watches would take the store past `api.max_watches`.

    Counted from the gauges' latest snapshot (unfinished watches, quarantined ones included), refreshed
    every second or so: a burst of registrations between two counts can overshoot by that much.
    """
    state = request.app[STATE_KEY]
    limit = state.settings.api.max_watches
    counts = state.metrics.counts
    if counts is None or adding <= 0:
        return
    held = sum(counts.watched_by_status.values()) + counts.quarantined
    if held + adding > limit:
        raise Problem(
            507,
            f"the watcher holds {held} unfinished watches; {adding} more would pass api.max_watches"
            f" ({limit}); let some finish, delete some, or raise the limit",
        )
