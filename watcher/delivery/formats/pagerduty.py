"""Format `pagerduty`: a PagerDuty Events API v2 alert event (SPEC §15).

The field names and limits are PagerDuty's "Send an Alert Event" page
(https://developer.pagerduty.com/docs/events-api-v2/trigger-events/): `summary` at most 1024 characters,
`dedup_key` at most 255, `severity` one of critical/error/warning/info; and its "Events API v2 Overview"
page: a request body at most 512 KB. The routing key is a secret: it is in the body and nowhere else
(never in a repr, a log line or a `RenderError`).
"""

from __future__ import annotations

from typing import Any, Final

from watcher.delivery.formats.base import FormatSettings, Rendered, RenderError, clip, encode, fit
from watcher.delivery.formats.facts import EventFacts, read
from watcher.delivery.formats.grouping import GroupSummary
from watcher.models import Event

DEFAULT_URL: Final = "https://events.pagerduty.com/v2/enqueue"
MAX_SUMMARY: Final = 1024
MAX_DEDUP_KEY: Final = 255
# "512 KB", read as the smaller 512,000 bytes so that either reading of KB holds.
MAX_BODY_BYTES: Final = 512_000
SEVERITY_RANK: Final = {"info": 0, "warning": 1, "error": 2, "critical": 3}
# Successively smaller copies of `custom_details` for a body over the limit: (longest string, most items).
_CLIPS: Final = ((4096, 100), (1024, 50), (256, 20), (64, 10))


def _routing_key(settings: FormatSettings) -> str:
    key = settings.routing_key
    if not key or not key.strip():
        raise RenderError(
            f"webhook {settings.name!r}: format pagerduty needs routing_key or routing_key_file"
        )
    return key.strip()


def _body(
    routing_key: str,
    dedup_key: str,
    summary: str,
    source: str,
    severity: str,
    timestamp: str,
    details: dict[str, Any],
    minimal: dict[str, Any],
) -> bytes:
    """The encoded event, its `custom_details` clipped until the body is within PagerDuty's size limit."""

    def build(custom: Any) -> bytes:
        return encode(
            {
                "routing_key": routing_key,
                "event_action": "trigger",
                "dedup_key": fit(dedup_key, MAX_DEDUP_KEY, empty="job-watcher"),
                "payload": {
                    "summary": fit(summary, MAX_SUMMARY, empty="job-watcher alert"),
                    "source": fit(source, MAX_SUMMARY, empty="job-watcher"),
                    "severity": severity,
                    "timestamp": timestamp,
                    "component": "job-watcher",
                    "custom_details": custom,
                },
            }
        )

    body = build(details)
    for max_str, max_items in _CLIPS:
        if len(body) <= MAX_BODY_BYTES:
            return body
        body = build(clip(details, max_str, max_items))
    return body if len(body) <= MAX_BODY_BYTES else build(minimal)


def _minimal(facts: EventFacts) -> dict[str, Any]:
    return {"truncated": True, "job_id": fit(facts.job_id, 256), "workspace": fit(facts.workspace, 256)}


def render(event: Event, settings: FormatSettings) -> Rendered:
    """The Events API v2 `trigger` for one event; `dedup_key` is the job id, so PagerDuty folds every
    alert about one job into one incident."""
    facts = read(event)
    body = _body(
        _routing_key(settings),
        facts.job_id or facts.event_id,
        facts.summary(MAX_SUMMARY),
        facts.workspace,
        facts.severity,
        facts.timestamp,
        facts.data,
        _minimal(facts),
    )
    return Rendered(body)


def render_group(group: GroupSummary, settings: FormatSettings) -> Rendered:
    """One `trigger` for a group: `dedup_key` is the group's id, the severity the highest of its members,
    `custom_details` the count, the listed members' `data` and the rest counted."""
    severity = max((m.severity for m in group.members), key=SEVERITY_RANK.__getitem__, default="info")
    details: dict[str, Any] = {
        "count": group.count,
        "events": [m.data for m in group.listed],
        "more": [{"workspace": w, "job_name": n, "count": c} for w, n, c in group.rest],
        "more_count": group.rest_count,
    }
    first = group.listed[0]
    body = _body(
        _routing_key(settings),
        group.group_id,
        group.title,
        ", ".join(group.workspaces),
        severity,
        first.timestamp,
        details,
        {"truncated": True, "count": group.count},
    )
    return Rendered(body)


__all__ = ["DEFAULT_URL", "MAX_BODY_BYTES", "MAX_DEDUP_KEY", "MAX_SUMMARY", "render", "render_group"]
