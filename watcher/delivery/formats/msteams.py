"""Format `msteams`: a Teams Workflows post carrying an Adaptive Card 1.4 (SPEC §15).

The envelope is the one Microsoft's "Send Adaptive Cards using an Incoming Webhook" shows
(https://learn.microsoft.com/microsoftteams/platform/webhooks-and-connectors/how-to/connectors-using):
`{"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
"contentUrl": null, "content": <card>}]}`, which the Workflows trigger "When a Teams webhook request is
received" accepts. The card uses only elements and properties of the Adaptive Card 1.4 schema
(http://adaptivecards.io/schemas/1.4.0/adaptive-card.json: AdaptiveCard, TextBlock, FactSet, Fact), and
the whole post stays under the 28 KB that "Create an Incoming Webhook"
(https://learn.microsoft.com/microsoftteams/platform/webhooks-and-connectors/how-to/add-incoming-webhook)
allows a message.
"""

from __future__ import annotations

from typing import Any, Final

from watcher.delivery.formats.base import FormatSettings, Rendered, encode, fit, one_line
from watcher.delivery.formats.facts import EventFacts, read
from watcher.delivery.formats.grouping import GroupSummary
from watcher.models import Event

CARD_CONTENT_TYPE: Final = "application/vnd.microsoft.card.adaptive"
CARD_SCHEMA: Final = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION: Final = "1.4"
# "The message size limit is 28 KB", read as the smaller 28,000 bytes, for the whole post.
MAX_BODY_BYTES: Final = 28_000
MAX_LABELS: Final = 15
# Text budgets (UTF-16 units) at full size; a post still over the limit is rebuilt at these fractions.
_TITLE, _VALUE, _ERROR = 200, 300, 4000
_SCALES: Final = (1.0, 0.5, 0.25, 0.1, 0.03)
_COLOR: Final = {"error": "attention", "warning": "warning"}


def _color(facts: EventFacts) -> str:
    return "good" if facts.kind == "success" else _COLOR.get(facts.severity, "default")


def _text(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **style}


def _facts(pairs: list[tuple[str, str]], limit: int) -> dict[str, Any]:
    facts = [{"title": fit(t, 60, empty="—"), "value": fit(v, limit, empty="—")} for t, v in pairs]
    return {"type": "FactSet", "facts": facts}


def _post(body: list[dict[str, Any]], fallback: str) -> bytes:
    card = {
        "$schema": CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "fallbackText": fallback,
        "body": body,
    }
    attachment = {"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": card}
    return encode({"type": "message", "attachments": [attachment]})


def _fitted(build: Any) -> bytes:
    """The first post `build(scale)` makes that is within the size limit, largest scale first."""
    body = b""
    for scale in _SCALES:
        body = build(scale)
        if len(body) <= MAX_BODY_BYTES:
            break
    return body


def _event_card(facts: EventFacts, scale: float) -> bytes:
    value = max(16, int(_VALUE * scale))
    pairs = [
        ("Job", facts.job_name or "(unnamed)"),
        ("Job id", facts.job_id),
        ("Status", facts.status),
        ("Previous status", facts.previous_status or "—"),
        ("Workspace", facts.workspace),
        ("Detected", facts.timestamp),
    ]
    if facts.polls is not None:
        pairs.append(("Polls", str(facts.polls)))
    pairs += [(f"Label {k}", v) for k, v in facts.labels[: max(1, int(MAX_LABELS * scale))]]
    title = one_line(f"{facts.subject} {facts.verb}", max(16, int(_TITLE * scale)))
    body = [_text(title, size="large", weight="bolder", color=_color(facts)), _facts(pairs, value)]
    if facts.error:
        body.append(
            _text(fit(facts.error, max(16, int(_ERROR * scale))), fontType="monospace", color="attention")
        )
    return _post(body, facts.summary(max(32, int(_TITLE * scale))))


def render(event: Event, settings: FormatSettings) -> Rendered:
    """The Workflows post for one event: a title, a FactSet of the job's facts, and its error."""
    facts = read(event)
    return Rendered(_fitted(lambda scale: _event_card(facts, scale)))


def _group_card(group: GroupSummary, scale: float) -> bytes:
    value = max(16, int(_VALUE * scale))
    title = one_line(group.title, max(16, int(_TITLE * scale)))
    listed = [
        (m.subject, f"{m.verb} in {m.workspace}" + (f": {m.error}" if m.error else "")) for m in group.listed
    ]
    body = [_text(title, size="large", weight="bolder", color="attention"), _facts(listed, value)]
    if group.rest_count:
        body.append(_text(f"and {group.rest_count} more:", weight="bolder"))
        rest = "\n\n".join(f"- {line}" for line in group.rest_lines())
        body.append(_text(fit(rest, max(64, int(_ERROR * scale))), isSubtle=True))
    return _post(body, title)


def render_group(group: GroupSummary, settings: FormatSettings) -> Rendered:
    """One post for a group: its title, the listed members as facts, the rest counted."""
    return Rendered(_fitted(lambda scale: _group_card(group, scale)))


__all__ = ["CARD_CONTENT_TYPE", "CARD_VERSION", "MAX_BODY_BYTES", "render", "render_group"]
