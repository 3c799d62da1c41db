"""A clock for tests: time only moves when the test says so (`watcher.clock.Clock`)."""

from __future__ import annotations

import asyncio


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

    @property
    def sleepers(self) -> int:
        """How many sleeps wait for the clock to move: a test knows a loop is parked before it advances."""
        return sum(not fut.done() for _, fut in self._sleepers)

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
