"""`scale` on PostgreSQL: claims per second at the smallest and the largest size, taking turns (SPEC §9).

Measured one after the other, minutes apart, the two saturated rates also measure the shared machine's
drift: on 2026-12-01 the 10k rate moved from 3,669 to 4,660 claims per second between two runs while the 1M
rate held at 3,105-3,143. So here two saturated daemons, one on each store, run at once and take turns: one
is paused (SIGSTOP) while the other has its window, and the figure is the ratio of their totals. Both sides
are daemons, so what a pause costs (catching up after SIGCONT) weighs on both alike.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from watcher.bench import harness, stores

PAIRS = 6
LEAD_S = 0.5  # after SIGCONT, before the window opens: the answers that came while it was paused


@dataclass
class Claims:
    """Claims (polls) per second in each side's windows."""

    small: list[float] = field(default_factory=list)
    large: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Largest / smallest: the ratio of the means of their windows."""
        return sum(self.large) / sum(self.small)


@dataclass(frozen=True)
class Side:
    """One saturated daemon's store and configuration."""

    store_url: str
    config: Path
    port: int
    name: str


async def measure(ctx: harness.Context, small: Side, large: Side) -> Claims:
    """Both daemons started, every watch made due, then `PAIRS` pairs of windows, the smaller store first."""
    pairs = 2 if ctx.quick else PAIRS
    window_s = ctx.window_s / 2
    out = Claims()
    ctx.say(f"scale: claims per second, both sizes taking turns ({pairs} pairs of {window_s:g}s windows)")
    # Both stores come from the idle phase, every watch due months ahead: the restores have nothing to do.
    async with (
        harness.daemon(ctx.workdir, large.config, large.port, name=large.name) as big,
        aiohttp.ClientSession() as s,
    ):
        big.pause()
        async with harness.daemon(ctx.workdir, small.config, small.port, name=small.name) as little:
            little.pause()
            now = time.time()
            for side in (small, large):
                await stores.all_overdue(side.store_url, now)
                await stores.vacuum_watches(side.store_url)
            for d in (little, big):
                await _warm_up(d, s, 0.5 if ctx.quick else 2.0)
            for _ in range(pairs):
                for d, rates in ((little, out.small), (big, out.large)):
                    d.resume()
                    try:
                        await asyncio.sleep(LEAD_S)
                        polls0, t0 = await d.polls_total(s), time.monotonic()
                        await asyncio.sleep(window_s)
                        polls1, t1 = await d.polls_total(s), time.monotonic()
                    finally:
                        d.pause()
                    if polls1 <= polls0:
                        raise harness.BenchError(f"scale: {d.name} made no polls in a window")
                    rates.append((polls1 - polls0) / (t1 - t0))
    return out


async def _warm_up(d: harness.Daemon, s: aiohttp.ClientSession, seconds: float) -> None:
    """Run a paused daemon until it polls (its idle wait, up to a second, began before the watches were
    made due) and `seconds` have passed, then pause it again."""
    d.resume()
    try:
        start, polls = time.monotonic(), await d.polls_total(s)
        while time.monotonic() - start < seconds or await d.polls_total(s) <= polls:
            if time.monotonic() - start > 60.0:
                raise harness.BenchError(f"scale: {d.name} made no polls within 60s")
            await asyncio.sleep(0.1)
    finally:
        d.pause()
