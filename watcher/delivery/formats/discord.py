"""Format `discord`: an Execute Webhook body, `{"content": …, "embeds": [...]}` (SPEC §15).

The limits are Discord's own. "Webhook Resource", Execute Webhook
(https://discord.com/developers/docs/resources/webhook#execute-webhook): `content` up to 2000 characters,
up to 10 embeds. "Message Resource", Embed Limits
(https://discord.com/developers/docs/resources/message#embed-object-embed-limits): title 256, description
4096, up to 25 fields, field name 256 and value 1024, footer text 2048, author name 256, and at most 6000
characters over all of those in all embeds of a message; leading and trailing whitespace is trimmed before
counting. Every text here is stripped, never empty where Discord requires it, and counted in UTF-16 units.
`allowed_mentions: {"parse": []}` stops a job's error from pinging `@everyone`, as the Execute Webhook page
advises for user-generated strings.
"""

from __future__ import annotations

from typing import Any, Final

from watcher.delivery.formats.base import FormatSettings, Rendered, encode, fit, one_line, units
from watcher.delivery.formats.facts import EventFacts, read
from watcher.delivery.formats.grouping import GroupSummary
from watcher.models import Event

MAX_CONTENT: Final = 2000
MAX_TITLE: Final = 256
MAX_DESCRIPTION: Final = 4096
MAX_FIELDS: Final = 25
MAX_TOTAL: Final = 6000
# Our own budgets, well inside Discord's per-part limits (the docstring lists them, the tests check them),
# so that a whole embed stays under MAX_TOTAL by construction.
_ERROR, _LINE, _VALUE, _FOOTER = 1500, 250, 200, 120
_COLORS: Final = {"success": 0x2EB67D, "error": 0xE01E5A, "warning": 0xECB22E, "info": 0x4A90D9}


def embed_chars(embeds: list[dict[str, Any]]) -> int:
    """The characters Discord counts against MAX_TOTAL: every title, description, field name and value,
    footer text and author name, in all embeds."""
    total = 0
    for embed in embeds:
        total += units(embed.get("title", "")) + units(embed.get("description", ""))
        total += sum(units(f["name"]) + units(f["value"]) for f in embed.get("fields", []))
        total += units(embed.get("footer", {}).get("text", "")) + units(
            embed.get("author", {}).get("name", "")
        )
    return total


def _field(name: str, value: str, *, inline: bool = True) -> dict[str, Any]:
    return {"name": fit(name, 64, empty="—"), "value": fit(value, _VALUE, empty="—"), "inline": inline}


def _message(content: str, embed: dict[str, Any]) -> bytes:
    over = embed_chars([embed]) - MAX_TOTAL
    if over > 0 and "description" in embed:  # unreachable with the budgets above; kept as a guard
        embed["description"] = fit(
            embed["description"], max(1, units(embed["description"]) - over - 1), empty="—"
        )
    embed["fields"] = embed.get("fields", [])[:MAX_FIELDS]
    doc = {
        "content": fit(content, MAX_CONTENT, empty="—"),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    }
    return encode(doc)


def _color(facts: EventFacts) -> int:
    return _COLORS["success"] if facts.kind == "success" else _COLORS[facts.severity]


def _group_color(group: GroupSummary) -> int:
    severities = {m.severity for m in group.members}
    for severity in ("error", "warning"):
        if severity in severities:
            return _COLORS[severity]
    return _COLORS["success"] if all(m.kind == "success" for m in group.members) else _COLORS["info"]


def render(event: Event, settings: FormatSettings) -> Rendered:
    """The message for one event: a one-line `content`, and an embed with the job's facts and error."""
    facts = read(event)
    fields = [
        _field("Job id", facts.job_id),
        _field("Status", facts.status),
        _field("Previous status", facts.previous_status or "—"),
        _field("Workspace", facts.workspace),
    ]
    if facts.polls is not None:
        fields.append(_field("Polls", str(facts.polls)))
    if facts.labels:
        labels = "\n".join(f"{one_line(k, 60)}={one_line(v, 100)}" for k, v in facts.labels)
        fields.append({"name": "Labels", "value": fit(labels, _VALUE * 2, empty="—"), "inline": False})
    embed: dict[str, Any] = {
        "title": one_line(f"{facts.subject} {facts.verb}", MAX_TITLE) or "job-watcher alert",
        "color": _color(facts),
        "fields": fields,
        "footer": {"text": one_line(f"job-watcher · event {facts.event_id}", _FOOTER) or "job-watcher"},
        "timestamp": facts.timestamp,
    }
    if facts.error:
        embed["description"] = fit(facts.error, _ERROR, empty="—")
    return Rendered(_message(facts.summary(300), embed))


def render_group(group: GroupSummary, settings: FormatSettings) -> Rendered:
    """One message for a group: the title as `content`, the listed members in the embed's description,
    and one field per (workspace, job name) of the rest with its count."""
    lines = [
        one_line(f"{m.subject} {m.verb} in {m.workspace}" + (f": {m.error}" if m.error else ""), _LINE)
        for m in group.listed
    ]
    fields = [
        {
            "name": fit(f"{one_line(ws, 40) or '?'}/{one_line(name, 56)}", 100, empty="—"),
            "value": str(n),
            "inline": True,
        }
        for ws, name, n in group.rest
    ]
    if group.rest_other:
        fields.append({"name": "other jobs", "value": str(group.rest_other), "inline": True})
    embed: dict[str, Any] = {
        "title": one_line(group.title, MAX_TITLE) or "job-watcher alerts",
        "description": fit("\n".join(f"• {line}" for line in lines), MAX_DESCRIPTION, empty="—"),
        "color": _group_color(group),
        "fields": fields,
        "footer": {"text": f"job-watcher · group {group.group_id}"},
        "timestamp": group.listed[0].timestamp,
    }
    if group.rest_count:
        embed["footer"]["text"] = f"and {group.rest_count} more · job-watcher · group {group.group_id}"
    return Rendered(_message(group.title, embed))


__all__ = [
    "MAX_CONTENT",
    "MAX_DESCRIPTION",
    "MAX_FIELDS",
    "MAX_TITLE",
    "MAX_TOTAL",
    "embed_chars",
    "render",
    "render_group",
]
