"""Injected time, and the time formats the daemon reads and writes.

Production uses the system clock, tests a manual one (`watcher.devtools.clock.ManualClock`). Times handed
around the daemon are wall-clock epoch seconds (floats) because they are persisted and compared across
restarts; `monotonic()` is only for measuring durations inside one process. The upstream's timestamps are
RFC 3339 (`iso_utc`, `parse_timestamp`); an HTTP `Retry-After` is seconds or a date (`parse_retry_after`).
"""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol


class Clock(Protocol):
    """What the daemon needs to know about time."""

    def now(self) -> float:
        """Wall-clock time in epoch seconds."""
        ...

    def monotonic(self) -> float:
        """A monotonic reading for durations."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait for `seconds` (may return early only if cancelled)."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Wall-clock time in epoch seconds."""
        return time.time()

    def monotonic(self) -> float:
        """A monotonic reading for durations."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the event loop."""
        await asyncio.sleep(max(0.0, seconds))


def iso_utc(ts: float) -> str:
    """Format epoch seconds as RFC 3339 UTC with milliseconds, like the upstream API does."""
    whole = int(ts)
    millis = round((ts - whole) * 1000)
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def parse_timestamp(value: object) -> float | None:
    """Epoch seconds of an ISO-8601 timestamp such as `2026-04-01T10:18:42.000Z`; None if unparsable.

    A timestamp without an offset is taken as UTC, which is what the upstream means.
    """
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait according to a `Retry-After` header, or None when absent or unreadable.

    Accepts delta-seconds (integer or decimal) and HTTP dates (RFC 9110 §10.2.3); a date in the past
    yields 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        # float() also accepts "nan" and "inf", which no server means and no scheduler can use.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are always GMT; an obsolete format without a zone means the same.
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


async def sleep_or_stop(clock: Clock, seconds: float, stop: asyncio.Event | None) -> None:
    """Sleep `seconds` on `clock`, returning early once `stop` is set."""
    if stop is None:
        await clock.sleep(seconds)
        return
    if stop.is_set():
        return
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((sleeper, stopper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, stopper):
            task.cancel()
        await asyncio.gather(sleeper, stopper, return_exceptions=True)
