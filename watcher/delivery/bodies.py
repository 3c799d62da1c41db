"""What a delivery sends: the body of an event, per format (`standard`: the event itself; `slack`: one line
of text). The same event always renders to the same bytes, so its signature is stable across retries."""

from __future__ import annotations

import json
from typing import Any

from watcher import strictjson
from watcher.delivery import formats
from watcher.delivery.formats import Rendered
from watcher.delivery.target import WebhookTarget
from watcher.models import Delivery, Event

_MAX_TEXT_DETAIL = 300


_SLACK_ICONS = {
    "success": ":white_check_mark:",
    "failed": ":x:",
    "expired": ":hourglass:",
    "missing": ":ghost:",
}


def one_line(value: Any, limit: int = _MAX_TEXT_DETAIL) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_text(event: Event) -> str:
    """One readable line describing `event`, e.g. ':x: job 5135bfe3… (customer.createBatch) failed …'."""
    data: dict[str, Any] = event.payload.get("data") or {}
    job: dict[str, Any] = data.get("job") or {}
    kind = event.type.removeprefix("job.")
    name = job.get("name")
    subject = f"job {event.job_id[:8]}…" + (f" ({one_line(name, 80)})" if name else "")
    where = f"in workspace {event.workspace}"
    if kind == "success":
        text = f"{subject} succeeded {where}"
    elif kind == "failed":
        error = job.get("error")
        text = f"{subject} failed {where}" + (f": {one_line(error)}" if error else "")
    elif kind in ("expired", "missing"):
        reason = data.get("reason")
        text = f"{subject} {kind} {where}" + (f": {one_line(reason)}" if reason else "")
    else:
        text = f"{subject} is now {kind} {where}"
    labels = data.get("labels") or {}
    if labels:
        text += " [" + ", ".join(f"{k}={one_line(v, 80)}" for k, v in sorted(labels.items())) + "]"
    return f"{_SLACK_ICONS.get(kind, ':information_source:')} {text}"


def message_id(delivery: Delivery) -> str:
    """The message's `webhook-id`: the event's id, or for a grouped message one derived from its members'
    event ids alone (the same members make the same id, on every retry and after a restart)."""
    if delivery.group:
        return formats.group_id(m.event.id for m in delivery.group)
    return delivery.event.id


def render_delivery(target: WebhookTarget, delivery: Delivery) -> Rendered:
    """The exact bytes POSTed for `delivery`: its event's body, or its group's summary (SPEC §15)."""
    if delivery.group:
        return formats.render_group(target.format, [m.event for m in delivery.group], target.format_settings)
    return render(target, delivery.event)


def render(target: WebhookTarget, event: Event) -> Rendered:
    """The exact bytes POSTed for `event` and their content type; `formats.RenderError` if the webhook's
    format cannot render it (a template failing on this event's data)."""
    if target.format in formats.RENDERERS:
        return formats.render(target.format, event, target.format_settings)
    return Rendered(render_body(target, event))


def render_body(target: WebhookTarget, event: Event) -> bytes:
    """The exact bytes POSTed for `event` in format `standard` or `slack`; the same event always renders
    to the same bytes."""
    doc: Any = {"text": slack_text(event)} if target.format == "slack" else event.payload
    # Sorted keys make the bytes (and so the signature) independent of how the payload was stored. Strict
    # JSON (RFC 8259) only: a payload stored before bodies were sanitised may still hold a NaN.
    return strictjson.dumps(doc, sort_keys=True).encode()
