"""Grouping (SPEC §15): many events for one webhook summed up as one message, Alertmanager-style.

"14 jobs failed in acme", the first `LISTED` members listed, the rest counted by workspace and job name;
and a group id derived from the member event ids alone, so the same members always make the same id,
whatever order they arrive in (the message's `webhook-id`, PagerDuty's `dedup_key`).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from watcher.delivery.formats.base import RenderError, one_line
from watcher.delivery.formats.facts import VERBS, EventFacts, read
from watcher.models import Event

# Fixed forever: changing it would change every group id and defeat the receivers' de-duplication.
GROUP_NAMESPACE: Final = uuid.UUID("0c4f3b0e-7a51-4c5e-9a0e-3f7e2d1b6a42")
LISTED: Final = 10
MAX_REST_ROWS: Final = 20  # (workspace, job name) rows counted by name; the others are summed in one line
MAX_KINDS_NAMED: Final = 4
UNNAMED: Final = "(unnamed)"


def group_id(event_ids: Iterable[str]) -> str:
    """A UUIDv5 of the sorted, distinct member event ids: order-independent and stable across restarts."""
    ids = sorted(set(event_ids))
    if not ids:
        raise RenderError("a group needs at least one event")
    return str(uuid.uuid5(GROUP_NAMESPACE, "\n".join(ids)))


@dataclass(frozen=True, slots=True)
class GroupSummary:
    """What a grouped message says: its id, its title, the members it lists and the rest it counts."""

    group_id: str
    count: int
    title: str  # "14 jobs failed in acme"
    members: tuple[EventFacts, ...]  # every member, oldest first
    listed: tuple[EventFacts, ...]  # the first `LISTED` of them
    rest: tuple[tuple[str, str, int], ...]  # (workspace, job name, count) of the others, most first
    rest_count: int  # how many members are not listed
    rest_other: int  # of those, how many fall beyond the `MAX_REST_ROWS` rows of `rest`
    workspaces: tuple[str, ...]  # distinct, sorted

    def rest_lines(self) -> list[str]:
        """The unlisted members counted, one line per workspace and job name, e.g. `acme/import: 3`."""
        lines = [f"{one_line(ws, 60) or '?'}/{one_line(name, 80)}: {count}" for ws, name, count in self.rest]
        if self.rest_other:
            lines.append(f"other jobs: {self.rest_other}")
        return lines


def _title(members: tuple[EventFacts, ...], workspaces: tuple[str, ...]) -> str:
    count = len(members)
    kinds = Counter(m.kind for m in members)
    where = (
        f"in {one_line(workspaces[0], 80) or '?'}"
        if len(workspaces) == 1
        else f"in {len(workspaces)} workspaces"
    )
    if len(kinds) == 1:
        kind = next(iter(kinds))
        verb = VERBS.get(kind, f"is now {one_line(kind, 40)}")
        if count > 1 and verb.startswith("is "):
            verb = "are " + verb.removeprefix("is ")
        noun = "job" if count == 1 else "jobs"
        return f"{count} {noun} {verb} {where}"
    named = ", ".join(f"{n} {one_line(k, 40)}" for k, n in kinds.most_common(MAX_KINDS_NAMED))
    if len(kinds) > MAX_KINDS_NAMED:
        named += ", …"
    return f"{count} job events {where}: {named}"


def summarize(events: Iterable[Event]) -> GroupSummary:
    """The summary of a group of events (at least one); members are ordered by detection time, then id."""
    members = tuple(sorted((read(e) for e in events), key=lambda f: (f.detected_at, f.event_id)))
    if not members:
        raise RenderError("a group needs at least one event")
    workspaces = tuple(sorted({m.workspace for m in members}))
    listed, unlisted = members[:LISTED], members[LISTED:]
    counts = Counter((m.workspace, m.job_name or UNNAMED) for m in unlisted)
    # Most first, then by name, so that the same members always give the same lines.
    rows = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    rest = tuple((ws, name, n) for (ws, name), n in rows[:MAX_REST_ROWS])
    return GroupSummary(
        group_id=group_id(m.event_id for m in members),
        count=len(members),
        title=_title(members, workspaces),
        members=members,
        listed=listed,
        rest=rest,
        rest_count=len(unlisted),
        rest_other=sum(n for _, n in rows[MAX_REST_ROWS:]),
        workspaces=workspaces,
    )


__all__ = ["GROUP_NAMESPACE", "LISTED", "GroupSummary", "group_id", "summarize"]
