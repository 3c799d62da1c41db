"""What every alert format shares: the rendered body, the one render error, a webhook's format settings,
and the text helpers that keep hostile event data within a vendor's limits.

A renderer is a pure function of an event (its `standard` body: type, timestamp, data) and the webhook's
`FormatSettings`; it returns `Rendered` or raises `RenderError`, whose one-line `reason` the delivery
stores when it marks the delivery dead (`render_failed`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Final

from watcher import strictjson
from watcher.clock import iso_utc
from watcher.errors import WatcherError

JSON: Final = "application/json"
# Epoch seconds of 9999-12-31T23:59:59Z: a later (or non-finite) time cannot be written as RFC 3339.
MAX_EPOCH_S: Final = 253_402_300_799.0
ELLIPSIS: Final = "…"
DEFAULT_ALERT_DURATION_S: Final = 3600.0
# The reason a delivery is dead with when its body cannot be rendered (the delivery's DeadReason value).
DEAD_REASON: Final = "render_failed"
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_WHITESPACE: Final = re.compile(r"\s+")


class RenderError(WatcherError):
    """A body could not be rendered for this event; `reason` is one line, safe to log and to store.

    The delivery that meets it is dead with reason `render_failed`: retrying the same event through the
    same renderer would fail the same way.
    """

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason, 300)
        super().__init__(self.reason)


@dataclass(frozen=True, slots=True)
class Rendered:
    """The exact bytes to POST and their content type."""

    body: bytes
    content_type: str = JSON


@dataclass(frozen=True)
class FormatSettings:
    """A webhook's format settings (SPEC §15); the repr never shows the routing key.

    `template` is the Jinja2 source of a `template` webhook (config reads `template_file` into it);
    `routing_key` is PagerDuty's integration key, a secret carried in the body and nowhere else.
    """

    name: str = "webhook"
    routing_key: str | None = field(default=None, repr=False)
    alert_duration_s: float = DEFAULT_ALERT_DURATION_S
    generator_url: str | None = None
    template: str | None = field(default=None, repr=False)
    content_type: str = JSON

    def __repr__(self) -> str:
        key = "<hidden>" if self.routing_key else None
        return (
            f"FormatSettings(name={self.name!r}, routing_key={key}, "
            f"alert_duration_s={self.alert_duration_s}, generator_url={self.generator_url!r}, "
            f"template={'<set>' if self.template else None}, content_type={self.content_type!r})"
        )


# -- text -------------------------------------------------------------------------------------------------


def clean_text(value: Any) -> str:
    """`value` as text that UTF-8 can carry: JSON for non-strings, lone surrogates made U+FFFD."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, sort_keys=True, default=str, allow_nan=True)
        except (TypeError, ValueError, RecursionError):
            text = repr(value)
    if text.isascii() or not _SURROGATE.search(text):
        return text
    # Through UTF-16 code units: a valid pair becomes its character, every lone surrogate U+FFFD.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def units(text: str) -> int:
    """The length of `text` in UTF-16 code units: never less than its code points.

    Vendors say "characters" without saying which; counting UTF-16 units (an emoji is two) keeps a text
    within the limit whichever they mean, code points or UTF-16.
    """
    if text.isascii():
        return len(text)
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def fit(text: str, limit: int, *, empty: str = "") -> str:
    """`text` stripped and cut to at most `limit` UTF-16 units, ending in `…` when cut.

    Leading and trailing whitespace goes first (Discord trims it before counting); a text that is empty
    after that becomes `empty`. Cuts never split a surrogate pair, since they cut whole code points.
    """
    text = clean_text(text).strip()
    if not text:
        return empty[:limit]
    if units(text) <= limit:
        return text
    budget = limit - 1
    out: list[str] = []
    for char in text:
        cost = 2 if ord(char) > 0xFFFF else 1
        if budget < cost:
            break
        out.append(char)
        budget -= cost
    return "".join(out).rstrip() + ELLIPSIS


def one_line(value: Any, limit: int) -> str:
    """`value` on one line (runs of whitespace, newlines included, become one space), cut to `limit`."""
    return fit(_WHITESPACE.sub(" ", clean_text(value)), limit)


# -- time -------------------------------------------------------------------------------------------------


def safe_epoch(ts: Any) -> float:
    """`ts` as epoch seconds that RFC 3339 can write: a non-number, NaN or out-of-range value is 0."""
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return 0.0
    value = float(ts) if not isinstance(ts, int) or abs(ts) < 2**62 else 0.0
    return value if math.isfinite(value) and 0.0 <= value <= MAX_EPOCH_S else 0.0


def rfc3339(ts: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds (`2026-04-01T10:18:43.120Z`)."""
    ts = safe_epoch(ts)
    if ts >= MAX_EPOCH_S:
        ts = MAX_EPOCH_S - 1  # iso_utc may round up to the next second
    return iso_utc(ts)


# -- JSON -------------------------------------------------------------------------------------------------


def encode(doc: Any) -> bytes:
    """Compact, key-sorted, strict JSON bytes of `doc` (RFC 8259: no NaN, no lone surrogate)."""
    return strictjson.dumps(doc, sort_keys=True).encode()


def clip(value: Any, max_str: int, max_items: int, depth: int = 16) -> Any:
    """A copy of the JSON value `value` made small: strings cut to `max_str`, arrays and objects to their
    first `max_items` members, nesting below `depth` replaced by `"…"`.

    Non-finite floats become None and lone surrogates U+FFFD, so the result is always strict JSON.
    """
    if isinstance(value, str):
        return fit(value, max_str) if units(value) > max_str else clean_text(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth <= 0:
        return ELLIPSIS
    if isinstance(value, dict):
        items = list(value.items())
        out = {clean_text(k)[:max_str]: clip(v, max_str, max_items, depth - 1) for k, v in items[:max_items]}
        if len(items) > max_items:
            out[ELLIPSIS] = f"{len(items) - max_items} more"
        return out
    if isinstance(value, list | tuple):
        kept = [clip(v, max_str, max_items, depth - 1) for v in value[:max_items]]
        return kept + ([f"{ELLIPSIS} {len(value) - max_items} more"] if len(value) > max_items else [])
    return clean_text(value)[:max_str]


__all__ = [
    "DEAD_REASON",
    "DEFAULT_ALERT_DURATION_S",
    "JSON",
    "FormatSettings",
    "RenderError",
    "Rendered",
    "clean_text",
    "clip",
    "encode",
    "fit",
    "one_line",
    "rfc3339",
    "safe_epoch",
    "units",
]
