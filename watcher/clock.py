"""Injected time: production uses the system clock, tests a manual one.

Times handed around the daemon are wall-clock epoch seconds (floats) because they are persisted and
compared across restarts; `monotonic()` is only for measuring durations inside one process.
"""

from __future__ import annotations

import asyncio
import time
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


class ManualClock:
    """A clock that only moves when a test advances it; sleepers wake when their time comes."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._mono = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        """The current fake wall-clock time."""
        return self._now

    def monotonic(self) -> float:
        """The current fake monotonic time."""
        return self._mono

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced past now + seconds."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self._now + seconds, fut))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward and let every sleeper whose time has come run."""
        self._now += seconds
        self._mono += seconds
        due = [s for s in self._sleepers if s[0] <= self._now]
        self._sleepers = [s for s in self._sleepers if s[0] > self._now]
        for _, fut in due:
            if not fut.done():
                fut.set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)


def iso_utc(ts: float) -> str:
    """Format epoch seconds as RFC 3339 UTC with milliseconds, like the upstream API does."""
    whole = int(ts)
    millis = round((ts - whole) * 1000)
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"
