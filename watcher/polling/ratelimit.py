"""The token bucket shared by every poll to one upstream (SPEC §3 `rate_limit_per_s`, SPEC §5).

It is a virtual-scheduling bucket (GCRA): instead of counting tokens, it keeps `next_free`, the time the
next token would be free at a steady rate, and lets a caller go as soon as that time is less than one
burst ahead of now. Each `acquire` reserves its slot synchronously before it sleeps, so concurrent callers
are served in call order without a lock and a caller with a token available never yields to the loop.

A 429 answers with AIMD: `penalize` halves the rate (down to a floor) and holds every acquire until the
upstream's Retry-After has passed; `reward` on each successful poll adds the rate back linearly over time.

The scheduler keeps one bucket per workspace inside the upstream's (`watcher.polling.buckets`); a poll for
a workspace whose bucket has no token now is not awaited: it reserves a later slot (`reserve`) and the
scheduler comes back to it then.
"""

from __future__ import annotations

from watcher.clock import Clock

# Slots this close to now count as now: the clock's float arithmetic must not turn a due slot into a
# microsecond sleep (with a manual clock, a sleep that never ends).
_EPSILON_S = 1e-6
# Responses to polls that were already in flight when the first 429 arrived carry no news; within this
# window after a halving, further 429s extend the hold but do not halve the rate again.
PENALTY_WINDOW_S = 1.0


class TokenBucket:
    """Paces polls to `rate_per_s` with a burst allowance, slowing down when the upstream says 429."""

    def __init__(
        self,
        rate_per_s: float,
        clock: Clock,
        burst: float | None = None,
        min_rate_fraction: float = 0.05,
        recovery_per_s: float = 0.1,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
        self._clock = clock
        self._configured = float(rate_per_s)
        self._rate = self._configured
        self._burst = max(1.0, float(burst) if burst is not None else self._configured)
        self._min_rate = self._configured * min_rate_fraction
        self._recovery_per_s = recovery_per_s
        start = clock.monotonic()
        self._next_free = start  # the time the next token is free at the current rate
        self._hold_until = start  # no acquire returns before this (a Retry-After)
        self._last_adjust = start  # the last time the rate changed: recovery counts from here
        self._last_penalty: float | None = None

    @property
    def current_rate(self) -> float:
        """The rate in force now, in tokens per second (the configured one unless penalised)."""
        return self._rate

    @property
    def configured_rate(self) -> float:
        """The rate the bucket was built with and recovers to."""
        return self._configured

    @property
    def throttled(self) -> bool:
        """True while a 429 keeps the rate below the configured one (successful polls recover it)."""
        return self._rate < self._configured

    def _slot(self, now: float) -> float:
        """When the next token is free: up to `burst` slots may be taken ahead of the steady schedule."""
        return max(now, self._next_free - (self._burst - 1.0) / self._rate, self._hold_until)

    def _take(self, slot: float) -> None:
        self._next_free = max(self._next_free, slot) + 1.0 / self._rate

    def _reserve(self, now: float) -> float:
        """Take the next slot and return its time; a slot at or before `now` means go at once."""
        slot = self._slot(now)
        self._take(slot)
        return slot

    def try_acquire(self) -> bool:
        """Take a token if one is free right now; False (and nothing taken) if the caller would have to wait.

        `acquire` without the coroutine, for the usual case of a bucket that is not limiting.
        """
        now = self._clock.monotonic()
        slot = self._slot(now)
        if slot > now + _EPSILON_S:
            return False
        self._take(slot)
        return True

    def reserve(self) -> float | None:
        """Take the next token: None if it is free now, else the monotonic time it is reserved for.

        `acquire` without the sleep, for a caller that must not wait: it comes back at that time and uses
        the token then (unless `held` says a later 429 put a hold over it). Reservations queue in call
        order, one interval apart at the current rate.
        """
        now = self._clock.monotonic()
        slot = self._reserve(now)
        return None if slot <= now + _EPSILON_S else slot

    def held(self) -> bool:
        """True while a 429's Retry-After holds every token."""
        return self._clock.monotonic() + _EPSILON_S < self._hold_until

    async def acquire(self) -> None:
        """Wait for a token: return at once if one is free, else sleep until the reserved slot.

        A caller cancelled while waiting forfeits its slot (the bucket stays conservative). A caller that
        reserved before a 429 arrived and would wake inside the new hold reserves again after it.
        """
        clock = self._clock
        now = clock.monotonic()
        slot = self._reserve(now)
        while slot > now + _EPSILON_S:
            await clock.sleep(slot - now)
            now = clock.monotonic()
            if now + _EPSILON_S >= self._hold_until:
                return
            slot = self._reserve(now)

    def penalize(self, retry_after_s: float | None) -> None:
        """React to a 429: halve the rate (not below the floor) and hold acquires for `retry_after_s`."""
        now = self._clock.monotonic()
        if retry_after_s is not None and retry_after_s > 0:
            self._hold_until = max(self._hold_until, now + retry_after_s)
        if self._last_penalty is None or now - self._last_penalty >= PENALTY_WINDOW_S:
            self._rate = max(self._min_rate, self._rate * 0.5)
            self._last_penalty = now
        self._last_adjust = now
        # Drop the burst allowance: after a 429 (and its hold) polls resume one interval apart.
        slack = (self._burst - 1.0) / self._rate
        self._next_free = max(self._next_free, max(now, self._hold_until) + slack)

    def reward(self) -> None:
        """React to a successful poll: recover the rate linearly toward the configured one.

        The rate grows by `recovery_per_s` x the configured rate per second elapsed since the last change
        (time inside a hold does not count), so with the default 0.1 a halved rate is whole after 5 s of
        successes. At the configured rate this is a single comparison.
        """
        if self._rate >= self._configured:
            return
        now = self._clock.monotonic()
        since = max(self._last_adjust, self._hold_until)
        if now <= since:
            return
        gained = self._recovery_per_s * self._configured * (now - since)
        slack = (self._burst - 1.0) / self._rate
        self._rate = min(self._configured, self._rate + gained)
        self._last_adjust = now
        # The burst allowance shrinks as the rate grows: keep the next free slot where it was, or a recovery
        # would push it later (with a burst of 400 at a rate of 20/s, by some 19 s).
        self._next_free -= slack - (self._burst - 1.0) / self._rate
