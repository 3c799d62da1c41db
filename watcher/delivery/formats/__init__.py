"""Alert formats (SPEC §15): the body of one event, or of a group of events, for each vendor.

`render(format, event, settings)` and `render_group(format, events, settings)` are pure: the same input
gives the same bytes. They return `Rendered` (body and content type) or raise `RenderError`, whose one-line
`reason` the delivery keeps when it marks itself dead with reason `render_failed`. `standard` and `slack`
stay in `watcher.webhook`; grouped `slack` is here, with the other chat and pager formats.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from watcher.delivery.formats import alertmanager, discord, msteams, pagerduty, template
from watcher.delivery.formats.base import FormatSettings, Rendered, RenderError, encode, fit, one_line
from watcher.delivery.formats.grouping import GroupSummary, group_id, summarize
from watcher.delivery.formats.template import validate_template
from watcher.models import Event

# Slack truncates a message past 40,000 characters (Slack changelog, "Truncating really long messages",
# https://api.slack.com/changelog/2018-04-truncating-really-long-messages) and advises clients to keep to
# 4,000; a grouped message keeps to the advice.
SLACK_MAX_TEXT: Final = 4000

RENDERERS: Final[dict[str, Callable[[Event, FormatSettings], Rendered]]] = {
    "pagerduty": pagerduty.render,
    "msteams": msteams.render,
    "discord": discord.render,
    "alertmanager": alertmanager.render,
    "template": template.render,
}


def _slack_group(group: GroupSummary, settings: FormatSettings) -> Rendered:
    lines = [f":rotating_light: *{one_line(group.title, 300)}*"]
    for m in group.listed:
        lines.append(
            "• "
            + one_line(f"{m.subject} {m.verb} in {m.workspace}" + (f": {m.error}" if m.error else ""), 300)
        )
    if group.rest_count:
        lines.append(f"and {group.rest_count} more: " + ", ".join(group.rest_lines()))
    return Rendered(encode({"text": fit("\n".join(lines), SLACK_MAX_TEXT)}))


GROUP_RENDERERS: Final[dict[str, Callable[[GroupSummary, FormatSettings], Rendered]]] = {
    "slack": _slack_group,
    "msteams": msteams.render_group,
    "discord": discord.render_group,
    "pagerduty": pagerduty.render_group,
}
# The formats SPEC §15 lets group (`group_window_s`); the others send one event per request.
GROUPABLE: Final = frozenset(GROUP_RENDERERS)


def render(fmt: str, event: Event, settings: FormatSettings) -> Rendered:
    """The body of `event` in format `fmt` (one of `RENDERERS`)."""
    renderer = RENDERERS.get(fmt)
    if renderer is None:
        raise RenderError(f"no renderer for format {one_line(fmt, 40)!r}")
    return renderer(event, settings)


def render_group(fmt: str, events: Iterable[Event], settings: FormatSettings) -> Rendered:
    """One message for all of `events` (at least one) in format `fmt` (one of `GROUPABLE`)."""
    renderer = GROUP_RENDERERS.get(fmt)
    if renderer is None:
        raise RenderError(f"format {one_line(fmt, 40)!r} does not group events")
    return renderer(summarize(events), settings)


__all__ = [
    "GROUPABLE",
    "RENDERERS",
    "FormatSettings",
    "GroupSummary",
    "RenderError",
    "Rendered",
    "group_id",
    "render",
    "render_group",
    "summarize",
    "validate_template",
]
