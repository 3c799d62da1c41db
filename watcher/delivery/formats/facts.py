"""The facts every alert format shows, read once from an event's `standard` body, whatever it holds.

Bodies are the upstream's JSON as received (SPEC §6) and may lack any field, hold a number where a string
was expected, grow a new status or carry megabytes: nothing here raises on them. Every format builds its
body from these facts and from `data` itself, so all formats say the same thing as `standard`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from watcher.delivery.formats.base import clean_text, one_line, rfc3339, safe_epoch
from watcher.models import Event

_NAME_PART: Final = re.compile(r"[^0-9A-Za-z]+")

# What a kind of event says about a job, in "14 jobs failed" and "job 5135bfe3 failed".
VERBS: Final = {
    "success": "succeeded",
    "failed": "failed",
    "expired": "expired",
    "missing": "went missing",
    "slow": "is slow",
}
SEVERITY: Final = {"failed": "error", "expired": "warning", "missing": "warning"}


@dataclass(frozen=True, slots=True)
class EventFacts:
    """One event, read defensively: every field is a clean string (or None) ready to be cut to a limit."""

    event_id: str
    job_id: str
    short_id: str
    kind: str  # the event name after `job.`: failed, expired, upstream_expired, unknown, …
    workspace: str
    job_name: str | None
    status: str
    previous_status: str | None
    error: str | None  # the job's error, or the watcher's reason for expired / missing
    labels: tuple[tuple[str, str], ...]
    detected_at: float  # epoch seconds, always writable as RFC 3339
    timestamp: str  # RFC 3339
    polls: int | None
    data: dict[str, Any]  # the standard body's `data` (an empty dict if it had none)

    @property
    def verb(self) -> str:
        """`failed`, `succeeded`, … or `is now <kind>` for a kind with no verb of its own."""
        return VERBS.get(self.kind, f"is now {self.kind}")

    @property
    def severity(self) -> str:
        """PagerDuty's severity (SPEC §15): failed → error, expired/missing → warning, others → info."""
        return SEVERITY.get(self.kind, "info")

    @property
    def subject(self) -> str:
        """`customer.createBatch (5135bfe3)`, or `job 5135bfe3` for a job without a name."""
        name = one_line(self.job_name, 120) if self.job_name else ""
        return f"{name} ({self.short_id})" if name else f"job {self.short_id}"

    def summary(self, limit: int) -> str:
        """One line: job name, short id, status, workspace and error, cut to `limit` UTF-16 units."""
        text = f"{self.subject} {self.verb} in {one_line(self.workspace, 120) or '?'}"
        if self.error:
            text += f": {self.error}"
        return one_line(text, limit)


def _str_or_none(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return clean_text(value)


def event_name(event_type: str) -> str:
    """The name after `job.` in an event type (`job.failed` → `failed`), cleaned; `unknown` if empty."""
    name = clean_text(event_type).removeprefix("job.")
    return name or "unknown"


def camel(name: str) -> str:
    """`upstream_expired` → `UpstreamExpired`: the parts between non-alphanumerics, capitalised."""
    return "".join(part[:1].upper() + part[1:] for part in _NAME_PART.split(name) if part)


def read(event: Event) -> EventFacts:
    """The facts of `event`; never raises, whatever its payload holds."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    raw_data = payload.get("data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    raw_job = data.get("job")
    job: dict[str, Any] = raw_job if isinstance(raw_job, dict) else {}
    kind = event_name(event.type if isinstance(event.type, str) else str(event.type))
    job_id = clean_text(event.job_id if event.job_id else job.get("id") or "")
    workspace = clean_text(event.workspace if event.workspace else data.get("workspace") or "")
    error = _str_or_none(job.get("error"))
    if error is None:
        error = _str_or_none(data.get("reason"))
    raw_labels = data.get("labels")
    labels = (
        tuple(sorted((clean_text(k), clean_text(v)) for k, v in raw_labels.items()))
        if isinstance(raw_labels, dict)
        else ()
    )
    status = _str_or_none(job.get("status")) or kind
    polls = data.get("polls")
    detected = safe_epoch(event.created_at)
    return EventFacts(
        event_id=clean_text(event.id),
        job_id=job_id,
        short_id=one_line(job_id[:8], 16) or "?",
        kind=kind,
        workspace=workspace,
        job_name=_str_or_none(job.get("name")),
        status=status,
        previous_status=_str_or_none(data.get("previous_status")),
        error=error,
        labels=labels,
        detected_at=detected,
        timestamp=rfc3339(detected),
        polls=polls if isinstance(polls, int) and not isinstance(polls, bool) else None,
        data=data,
    )


__all__ = ["EventFacts", "camel", "event_name", "read"]
