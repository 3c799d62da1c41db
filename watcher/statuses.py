"""Upstream statuses, known and grown (SPEC §2): the names the watcher gives them, their event types, their
metric labels, and the once-per-value log of the grown ones.

The upstream documents six statuses, but a service grows: a `cancelled` or `paused` one day is the upstream's
word, not an error. Every status value gets a *name*, which is what the watcher stores, compares and
builds its event type from:

- a known status, in any case (`SUCCESS` is `success`): itself, lower-cased;
- a grown one that reads as a name (`[a-z][a-z0-9_]{0,31}` once lower-cased): itself, lower-cased, except
  that one named like the watcher's own events (`expired`, `missing`, `slow`, `unknown`) becomes
  `upstream_<status>`, so that it can never be mistaken for the watcher's verdict;
- anything else (`Cancelled (by user)`): lower-cased, made printable and cut to 64 characters, so that a
  change between two such values is still a transition; its event type is `job.unknown`.

Metric labels are bounded whatever the upstream sends: every grown name is `other`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Final

import structlog

from watcher.models import KNOWN_STATUSES, TERMINAL_STATUSES, FinalState, JobStatus

log = structlog.get_logger("watcher.statuses")

NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
# The watcher's own event names (SPEC §6, §12): an upstream status of that name gets a prefix.
RESERVED_NAMES: Final = frozenset({"expired", "missing", "slow", "unknown"})
RESERVED_PREFIX: Final = "upstream_"
UNKNOWN_EVENT: Final = "job.unknown"
OTHER_LABEL: Final = "other"
# The values of every metric label `status`: the known statuses, the watcher's verdicts, the status of a
# watch before its first poll, and `other` for everything grown.
METRIC_STATUSES: Final = frozenset({*KNOWN_STATUSES, "expired", "missing", "unknown", OTHER_LABEL})
MAX_ODD_LENGTH: Final = 64
DEFAULT_TERMINAL: Final = ("success", "failed")
VERDICT_EVENTS: Final = ("job.expired", "job.missing")
# A job still running past its type's `slow_quantile` (SPEC §12): not a transition, not a default event.
SLOW_EVENT: Final = "job.slow"
# The list statuses (`Watch.list_status`) of the documented statuses and the watcher's verdicts, the ones
# every page, gauge and example names: unfinished first, in lifecycle order ("unknown": not polled yet),
# then the final ones. A grown status and "quarantined" are list statuses too, named as they come.
UNFINISHED_STATUSES: Final = ("unknown", *(s.value for s in JobStatus if s not in TERMINAL_STATUSES))
FINISHED_STATUSES: Final = tuple(s.value for s in FinalState)
LIST_STATUSES: Final = frozenset(UNFINISHED_STATUSES + FINISHED_STATUSES)


def status_name(value: str) -> str:
    """The watcher's name for an upstream `status` value (see the module docstring)."""
    if value in KNOWN_STATUSES:
        return value  # the hot path: one set lookup per poll
    lower = value.lower()
    if lower in KNOWN_STATUSES:
        return lower
    if NAME_RE.fullmatch(lower):
        return RESERVED_PREFIX + lower if lower in RESERVED_NAMES else lower
    odd = "".join(c if c.isprintable() else "\ufffd" for c in lower[:MAX_ODD_LENGTH])
    return odd if len(lower) <= MAX_ODD_LENGTH else odd[: MAX_ODD_LENGTH - 1] + "…"


def is_grown(value: str) -> bool:
    """True if `value` is not one of the documented statuses, in any case."""
    return value not in KNOWN_STATUSES and value.lower() not in KNOWN_STATUSES


def is_event_name(name: str) -> bool:
    """True if `job.<name>` is an event type (a name, or a reserved name with its prefix)."""
    if NAME_RE.fullmatch(name):
        return True
    return name.startswith(RESERVED_PREFIX) and name[len(RESERVED_PREFIX) :] in RESERVED_NAMES


def event_type(name: str) -> str:
    """The event type of a transition to the status named `name`: `job.<name>`, else `job.unknown`."""
    if name in KNOWN_STATUSES or is_event_name(name):
        return "job." + name
    return UNKNOWN_EVENT


def metric_label(name: str) -> str:
    """The `status` label of a status or verdict name: itself if known, else `other` (SPEC §2)."""
    return name if name in METRIC_STATUSES else OTHER_LABEL


def config_name(value: str) -> str:
    """A status named in the configuration (`terminal_statuses`) as the watcher names it; ValueError if it
    is not a name."""
    lower = value.lower()
    if not NAME_RE.fullmatch(lower):
        raise ValueError(f"{value!r} is not a status name ([a-z][a-z0-9_], at most 32 characters)")
    return status_name(lower)


def default_events(terminal: Iterable[str]) -> list[str]:
    """The default webhook filter: `job.<s>` for every terminal status, then `job.expired`, `job.missing`."""
    return list(dict.fromkeys([*(event_type(s) for s in terminal), *VERDICT_EVENTS]))


def known_events(terminal: Iterable[str]) -> frozenset[str]:
    """The event types the watcher knows it can emit: every documented status, every configured terminal
    one, its verdicts and `job.unknown`."""
    return frozenset(
        {
            *(f"job.{s}" for s in KNOWN_STATUSES),
            *(event_type(s) for s in terminal),
            *VERDICT_EVENTS,
            UNKNOWN_EVENT,
            SLOW_EVENT,
        }
    )


class GrownStatusLog:
    """Logs each distinct grown status value once per process (SPEC §2), at most `max_values` of them;
    after that, one summary line per `summary_every_s` counts what was not logged."""

    def __init__(
        self, monotonic: Callable[[], float], max_values: int = 100, summary_every_s: float = 3600.0
    ) -> None:
        self._monotonic = monotonic
        self._max_values = max_values
        self._summary_every_s = summary_every_s
        self._logged: set[str] = set()
        self._unlogged: set[str] = set()  # distinct values seen past the cap since the last summary
        self._unlogged_polls = 0
        self._last_summary: float | None = None

    def seen(self, value: str, job_id: str, workspace: str) -> None:
        """Note one poll that answered the grown status `value`."""
        key = value[: MAX_ODD_LENGTH + 1]  # bounded memory, whatever the upstream sends
        if key in self._logged:
            return
        if len(self._logged) < self._max_values:
            self._logged.add(key)
            name = status_name(value)
            log.warning(
                "upstream.grown_status",
                status=key,
                name=name,
                event_type=event_type(name),
                metric_label=OTHER_LABEL,
                job_id=job_id,
                workspace=workspace,
            )
            return
        self._unlogged_polls += 1
        if len(self._unlogged) < 10 * self._max_values:
            self._unlogged.add(key)
        now = self._monotonic()
        if self._last_summary is None or now - self._last_summary >= self._summary_every_s:
            log.warning(
                "upstream.grown_status_summary",
                logged_values=len(self._logged),
                unlogged_values=len(self._unlogged),
                unlogged_polls=self._unlogged_polls,
                every_s=self._summary_every_s,
            )
            self._last_summary = now
            self._unlogged.clear()
            self._unlogged_polls = 0


__all__ = [
    "DEFAULT_TERMINAL",
    "FINISHED_STATUSES",
    "LIST_STATUSES",
    "METRIC_STATUSES",
    "OTHER_LABEL",
    "UNFINISHED_STATUSES",
    "GrownStatusLog",
    "config_name",
    "default_events",
    "event_type",
    "is_event_name",
    "is_grown",
    "known_events",
    "metric_label",
    "status_name",
]
