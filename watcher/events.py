"""Events: stable ids derived from what happened, and the `standard` body (SPEC §6)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from watcher.clock import iso_utc
from watcher.models import Event, FinalState, Watch
from watcher.statuses import SLOW_EVENT, event_type, status_name

# Fixed forever: changing it would change every event id and break receivers' de-duplication.
EVENT_NAMESPACE = uuid.UUID("5f0c4a53-9d0e-4c47-8a3b-6f1f2b0a7e11")


def event_id(job_id: str, kind: str, updated_at: str | None = None) -> str:
    """The id of an event: a UUIDv5 of job id, status (or `expired`/`missing`) and upstream `updatedAt`.

    The same transition always yields the same id, even when it is detected twice or after a restart.
    """
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{job_id}|{kind}|{updated_at or ''}"))


def _data(
    watch: Watch, job: dict[str, Any] | None, previous_status: str | None, now: float
) -> dict[str, Any]:
    return {
        "job": job,
        "previous_status": previous_status,
        "workspace": watch.workspace,
        "labels": dict(watch.labels),
        "detected_at": iso_utc(now),
        "polls": watch.polls,
    }


def transition_event(watch: Watch, body: dict[str, Any], previous_status: str | None, now: float) -> Event:
    """The event for an observed status change; `body` is the upstream JSON as received.

    The type is `job.<name>` for the watcher's name of the body's status (SPEC §2), or `job.unknown` for a
    value that is no name (the raw value stays in the body).
    """
    status = status_name(str(body["status"]))
    updated = body.get("updatedAt")
    eid = event_id(watch.job_id, status, updated if isinstance(updated, str) else None)
    etype = event_type(status)
    payload = {"type": etype, "timestamp": iso_utc(now), "data": _data(watch, body, previous_status, now)}
    return Event(
        id=eid, job_id=watch.job_id, workspace=watch.workspace, type=etype, created_at=now, payload=payload
    )


def verdict_event(watch: Watch, verdict: FinalState, now: float, reason: str) -> Event:
    """The watcher's own `job.expired` or `job.missing` event."""
    etype = f"job.{verdict.value}"
    job = {"id": watch.job_id, "status": watch.status, "updatedAt": watch.upstream_updated_at}
    data = _data(watch, job, watch.status, now)
    data["reason"] = reason
    payload = {"type": etype, "timestamp": iso_utc(now), "data": data}
    return Event(
        id=event_id(watch.job_id, verdict.value),
        job_id=watch.job_id,
        workspace=watch.workspace,
        type=etype,
        created_at=now,
        payload=payload,
    )


def slow_event(watch: Watch, body: dict[str, Any], now: float, age_s: float, slow_after_s: float) -> Event:
    """The watcher's `job.slow` event (SPEC §12): the job still runs past its type's `slow_quantile`.

    One id per job, so a second detection (another replica, a restart) is the same event and is stored once.
    """
    data = _data(watch, body, watch.status, now)
    data["age_s"] = round(age_s, 3)
    data["slow_after_s"] = round(slow_after_s, 3)
    payload = {"type": SLOW_EVENT, "timestamp": iso_utc(now), "data": data}
    return Event(
        id=event_id(watch.job_id, "slow"),
        job_id=watch.job_id,
        workspace=watch.workspace,
        type=SLOW_EVENT,
        created_at=now,
        payload=payload,
    )


@dataclass(frozen=True, slots=True)
class WebhookFilter:
    """What a webhook takes (SPEC §6, §15): event types, and optionally only some workspaces, and only
    watches that carry every one of `labels` (key and value)."""

    name: str
    events: frozenset[str]
    workspaces: frozenset[str] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, event_type: str, watch: Watch) -> bool:
        """Whether an event of `event_type` about `watch` goes to this webhook (the watch's own choice of
        webhooks aside)."""
        if event_type not in self.events:
            return False
        if self.workspaces is not None and watch.workspace not in self.workspaces:
            return False
        return all(watch.labels.get(k) == v for k, v in self.labels.items())


def route(event_type: str, watch: Watch, webhook_filters: Iterable[WebhookFilter]) -> tuple[str, ...]:
    """Names of the webhooks an event goes to: the watch's choice (all if None) whose filter matches."""
    chosen = None if watch.webhooks is None else set(watch.webhooks)
    return tuple(
        f.name
        for f in webhook_filters
        if (chosen is None or f.name in chosen) and f.matches(event_type, watch)
    )
