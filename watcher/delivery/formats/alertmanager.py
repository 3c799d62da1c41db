"""Format `alertmanager`: the body of `POST {url}/api/v2/alerts`, a list of one alert (SPEC §15).

The shape is Alertmanager's OpenAPI `postableAlerts` (api/v2/openapi.yaml: an array of objects with
`labels` (required), `annotations`, `startsAt`, `endsAt`, `generatorURL`; label sets map strings to
strings). What Alertmanager accepts is its `Alert.Validate` (alert/alert.go) after `removeEmptyLabels`
(api/v2/api.go): a start time, an end no earlier than the start, at least one label, label and annotation
names valid (the classic `[a-zA-Z_][a-zA-Z0-9_]*`, which every name here is) and values valid UTF-8. An
empty label value is dropped by Alertmanager, so an empty one is left out here, where it shows.
Prometheus' "Sending alerts" page (https://prometheus.io/docs/alerting/latest/clients/) describes the
fields: labels identify an alert, annotations do not, generatorURL is a back-link.
"""

from __future__ import annotations

import math
from typing import Any, Final

from watcher.delivery.formats.base import (
    DEFAULT_ALERT_DURATION_S,
    MAX_EPOCH_S,
    FormatSettings,
    Rendered,
    encode,
    fit,
    one_line,
    rfc3339,
)
from watcher.delivery.formats.facts import EventFacts, camel, read
from watcher.models import Event

API_PATH: Final = "/api/v2/alerts"
# Alertmanager sets no length on a label value, but labels are its identity and stay in memory for the
# alert's life; ours are cut to this (a job id or a name is far shorter), annotations to MAX_ANNOTATION.
MAX_LABEL: Final = 256
MAX_ANNOTATION: Final = 4096


def alerts_url(base_url: str) -> str:
    """Where to POST: the Alertmanager's base URL (as configured in `url`) with `/api/v2/alerts`."""
    return base_url.rstrip("/") + API_PATH


def alertname(kind: str) -> str:
    """`Job` and the event's name in CamelCase: `failed` → `JobFailed`, `upstream_expired` →
    `JobUpstreamExpired`; a name with nothing alphanumeric gives `JobUnknown`."""
    return "Job" + (camel(kind) or "Unknown")


def _duration(settings: FormatSettings) -> float:
    duration = settings.alert_duration_s
    if isinstance(duration, bool) or not isinstance(duration, int | float) or not math.isfinite(duration):
        return DEFAULT_ALERT_DURATION_S
    return max(0.0, float(duration))


def alert(facts: EventFacts, settings: FormatSettings) -> dict[str, Any]:
    """One postable alert for `facts`."""
    labels = {
        "alertname": alertname(facts.kind),
        "job_id": one_line(facts.job_id, MAX_LABEL),
        "job_name": one_line(facts.job_name or "", MAX_LABEL),
        "workspace": one_line(facts.workspace, MAX_LABEL),
        "job_status": one_line(facts.status, MAX_LABEL),
    }
    annotations = {"summary": facts.summary(MAX_ANNOTATION)}
    if facts.error:
        annotations["error"] = fit(facts.error, MAX_ANNOTATION)
    # The end is at least the start, and both are writable as RFC 3339 (SPEC: endsAt = startsAt + duration).
    ends = min(facts.detected_at + _duration(settings), MAX_EPOCH_S - 1)
    doc: dict[str, Any] = {
        "labels": {k: v for k, v in labels.items() if v},
        "annotations": annotations,
        "startsAt": facts.timestamp,
        "endsAt": rfc3339(max(ends, facts.detected_at)),
    }
    if settings.generator_url:
        doc["generatorURL"] = settings.generator_url
    return doc


def render(event: Event, settings: FormatSettings) -> Rendered:
    """The `postableAlerts` list for one event."""
    return Rendered(encode([alert(read(event), settings)]))


__all__ = ["API_PATH", "MAX_ANNOTATION", "MAX_LABEL", "alert", "alertname", "alerts_url", "render"]
