"""Tests of the shared token bucket, driven by a manual clock.

Rates are powers of two and the clock moves in 1/64 s steps so that every slot time is exact in binary
floating point and the assertions can be equalities.
"""

from __future__ import annotations

import asyncio

import pytest

from watcher.devtools.clock import ManualClock
from watcher.polling.ratelimit import PENALTY_WINDOW_S, TokenBucket

STEP = 1 / 64


async def run_for(clock: ManualClock, seconds: float) -> None:
    """Advance the manual clock in small exact steps, letting woken waiters run after each."""
    for _ in range(round(seconds / STEP)):
        await clock.advance(STEP)


def start_acquirers(bucket: TokenBucket, clock: ManualClock, n: int) -> tuple[list[float], list[int]]:
    """Start `n` concurrent acquirers; returns (times they got a token, their order of completion)."""
    times: list[float] = []
    order: list[int] = []

    async def one(i: int) -> None:
        await bucket.acquire()
        times.append(clock.monotonic())
        order.append(i)

    for i in range(n):
        asyncio.get_running_loop().create_task(one(i))
    return times, order


def acquires_without_yielding(bucket: TokenBucket) -> bool:
    """True if one acquire completes in a single step of its coroutine, never suspending."""
    coro = bucket.acquire()
    try:
        coro.send(None)
    except StopIteration:
        return True
    coro.close()
    return False


class TestPacing:
    """Without 429s the bucket hands out a burst, then one token per 1/rate seconds."""

    async def test_steady_rate(self) -> None:
        """With no burst allowance, tokens come exactly 1/rate apart."""
        clock = ManualClock()
        bucket = TokenBucket(16.0, clock, burst=1)
        times, _ = start_acquirers(bucket, clock, 5)
        await asyncio.sleep(0)
        await run_for(clock, 1.0)
        assert times == [0.0, 0.0625, 0.125, 0.1875, 0.25]

    async def test_burst_then_rate(self) -> None:
        """A full bucket gives `burst` tokens at once, without yielding, then paces the rest."""
        clock = ManualClock()
        bucket = TokenBucket(16.0, clock, burst=4)
        assert all(acquires_without_yielding(bucket) for _ in range(4))
        assert not acquires_without_yielding(bucket)  # the 5th had to wait (its slot is forfeited)
        times, _ = start_acquirers(bucket, clock, 2)
        await asyncio.sleep(0)
        await run_for(clock, 1.0)
        assert times == [0.125, 0.1875]

    async def test_burst_refills_after_idle(self) -> None:
        """After an idle period a burst is available again, but never more than `burst`."""
        clock = ManualClock()
        bucket = TokenBucket(16.0, clock, burst=3)
        assert all(acquires_without_yielding(bucket) for _ in range(3))
        await run_for(clock, 10.0)
        assert all(acquires_without_yielding(bucket) for _ in range(3))
        assert not acquires_without_yielding(bucket)

    async def test_default_burst_is_one_second_of_tokens(self) -> None:
        """The default burst is max(1, rate)."""
        clock = ManualClock()
        bucket = TokenBucket(8.0, clock)
        assert sum(acquires_without_yielding(bucket) for _ in range(10)) == 8
        slow = TokenBucket(0.5, clock)
        assert sum(acquires_without_yielding(slow) for _ in range(3)) == 1

    async def test_many_concurrent_acquirers_in_order(self) -> None:
        """Fifty concurrent acquirers each get a token at its slot, in the order they asked."""
        clock = ManualClock()
        bucket = TokenBucket(32.0, clock, burst=2)
        times, order = start_acquirers(bucket, clock, 50)
        await asyncio.sleep(0)
        await run_for(clock, 2.0)
        assert order == list(range(50))
        assert times == [0.0, 0.0] + [i / 32 for i in range(1, 49)]

    def test_rejects_non_positive_rate(self) -> None:
        """A zero rate is a configuration mistake, reported at construction."""
        with pytest.raises(ValueError, match="rate_per_s"):
            TokenBucket(0.0, ManualClock())


class TestPenalty:
    """A 429 halves the rate, holds for Retry-After, and the rate recovers on successes."""

    async def test_penalty_halves_and_holds(self) -> None:
        """After penalize(2.0) nothing gets a token for 2 s, then tokens come at half the rate."""
        clock = ManualClock()
        bucket = TokenBucket(16.0, clock, burst=8)
        bucket.penalize(2.0)
        assert bucket.current_rate == 8.0
        times, _ = start_acquirers(bucket, clock, 3)
        await asyncio.sleep(0)
        await run_for(clock, 3.0)
        assert times == [2.0, 2.125, 2.25]

    async def test_waiter_reserved_before_the_429_waits_out_the_hold(self) -> None:
        """A caller already sleeping toward its slot does not fire inside a hold that began later."""
        clock = ManualClock()
        bucket = TokenBucket(4.0, clock, burst=1)
        assert acquires_without_yielding(bucket)
        times, _ = start_acquirers(bucket, clock, 1)  # its slot is at 0.25
        await asyncio.sleep(0)
        bucket.penalize(1.0)
        await run_for(clock, 2.0)
        assert times == [1.0]

    async def test_penalty_without_retry_after_only_slows(self) -> None:
        """A 429 with no Retry-After halves the rate and drops the burst but holds nothing."""
        clock = ManualClock()
        bucket = TokenBucket(16.0, clock, burst=8)
        bucket.penalize(None)
        times, _ = start_acquirers(bucket, clock, 3)
        await asyncio.sleep(0)
        await run_for(clock, 1.0)
        assert times == [0.0, 0.125, 0.25]

    async def test_in_flight_429s_halve_once_per_window(self) -> None:
        """A volley of 429s from polls in flight halves once; later ones halve again, down to the floor."""
        clock = ManualClock()
        bucket = TokenBucket(16.0, clock, min_rate_fraction=0.1)
        for _ in range(10):
            bucket.penalize(None)
        assert bucket.current_rate == 8.0
        for _ in range(5):
            await run_for(clock, PENALTY_WINDOW_S)
            bucket.penalize(None)
        assert bucket.current_rate == pytest.approx(1.6)

    async def test_reward_recovers_linearly_after_the_hold(self) -> None:
        """Successes add recovery_per_s x rate per second, counted from the end of the hold."""
        clock = ManualClock()
        bucket = TokenBucket(16.0, clock, recovery_per_s=0.25)
        bucket.penalize(1.0)
        assert bucket.current_rate == 8.0
        await run_for(clock, 1.0)
        bucket.reward()  # the hold just ended: nothing recovered yet
        assert bucket.current_rate == 8.0
        await run_for(clock, 1.0)
        bucket.reward()
        assert bucket.current_rate == 12.0
        await run_for(clock, 10.0)
        bucket.reward()
        assert bucket.current_rate == bucket.configured_rate == 16.0

    async def test_recovery_never_delays_the_next_token(self) -> None:
        """A big burst allowance at a penalised rate: as the rate recovers, the next token stays free now."""
        clock = ManualClock()
        bucket = TokenBucket(64.0, clock, min_rate_fraction=1 / 16)
        for _ in range(4):
            bucket.penalize(None)
            await run_for(clock, PENALTY_WINDOW_S)
        assert bucket.current_rate == 4.0
        for _ in range(20):
            await run_for(clock, 0.5)
            bucket.reward()
            assert bucket.try_acquire(), bucket.current_rate
        assert bucket.current_rate == bucket.configured_rate


def test_try_acquire_takes_only_a_free_token() -> None:
    """`try_acquire` is `acquire`'s no-wait path: it takes a token when one is free and nothing otherwise."""
    clock = ManualClock()
    bucket = TokenBucket(2.0, clock)
    taken = 0
    while bucket.try_acquire():
        taken += 1
        assert taken < 100, "a bucket of 2/s never runs dry"
    assert taken >= 1
    assert not bucket.try_acquire()  # still dry: a refused try takes nothing
    asyncio.run(clock.advance(0.5))
    assert bucket.try_acquire()  # one interval later, one token
    assert not bucket.try_acquire()
    bucket.penalize(10.0)
    asyncio.run(clock.advance(5.0))
    assert not bucket.try_acquire()  # held by the 429's Retry-After
