"""The store's dataclasses as the API's response models (times as RFC 3339, sources by name), and a model as
the JSON answer (`ok`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from watcher.clock import iso_utc
from watcher.http.v1.models import CallbackOut, DeliveryOut, TransitionOut, WatchOut
from watcher.masking import MASK, mask_url
from watcher.models import Callback, Delivery, DeliveryState, Event, Source, Watch


def _iso(ts: float | None) -> str | None:
    return None if ts is None else iso_utc(ts)


def source_names(sources: int) -> list[str]:
    """The `Source` bits of a watch as names, e.g. ["file", "api"]."""
    return [s.name.lower() for s in Source if s.name is not None and sources & s]


def watch_out(watch: Watch) -> WatchOut:
    """A watch as `WatchOut`."""
    return WatchOut.model_validate(
        {
            "job_id": watch.job_id,
            "workspace": watch.workspace,
            "state": watch.list_status,
            "status": watch.status,
            "final": watch.final,
            "labels": watch.labels,
            "webhooks": None if watch.webhooks is None else list(watch.webhooks),
            "max_watch_s": watch.max_watch_s,
            "sources": source_names(watch.sources),
            "polls": watch.polls,
            "registered_at": iso_utc(watch.registered_at),
            "last_polled_at": _iso(watch.last_polled_at),
            "next_poll_at": (
                None if watch.finished or watch.quarantined_at is not None else iso_utc(watch.next_poll_at)
            ),
            "finished_at": _iso(watch.finished_at),
            "last_error": watch.last_error,
            "failures": watch.failures,
            "last_failure": watch.quarantine_reason,
            "quarantined_at": _iso(watch.quarantined_at),
            "callback": callback_out(watch.callback),
        }
    )


def callback_out(callback: Callback | None) -> CallbackOut | None:
    """A callback with its secrets masked: userinfo and query of the URL, every header value."""
    if callback is None:
        return None
    return CallbackOut(
        url=mask_url(callback.url),
        events=None if callback.events is None else list(callback.events),
        headers=dict.fromkeys(callback.headers, MASK),
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def transition_out(event: Event) -> TransitionOut:
    """An event as one transition of a watch; fields come from its stored payload, defensively."""
    data = _dict(event.payload.get("data"))
    job = _dict(data.get("job"))
    return TransitionOut.model_validate(
        {
            "event_id": event.id,
            "type": event.type,
            "status": event.type.removeprefix("job."),
            "previous_status": _str(data.get("previous_status")),
            "detected_at": iso_utc(event.created_at),
            "upstream_updated_at": _str(job.get("updatedAt")),
        }
    )


def delivery_out(delivery: Delivery) -> DeliveryOut:
    """A delivery as `DeliveryOut`."""
    return DeliveryOut.model_validate(
        {
            "id": delivery.id,
            "event_id": delivery.event.id,
            "event_type": delivery.event.type,
            "job_id": delivery.event.job_id,
            "webhook": delivery.webhook,
            "state": delivery.state.value,
            "attempts": delivery.attempts,
            "created_at": iso_utc(delivery.created_at),
            "next_attempt_at": (
                iso_utc(delivery.next_attempt_at) if delivery.state is DeliveryState.PENDING else None
            ),
            "last_error": delivery.last_error,
            "delivered_at": _iso(delivery.delivered_at),
        }
    )


def ok(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """`model` as the JSON body of a success."""
    return web.json_response(model.model_dump(mode="json"), status=status, headers=headers)
