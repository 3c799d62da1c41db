"""The polling policy (SPEC §5): when to poll a job next and what one poll result means.

Everything here is a pure function of (state, now, rng): no I/O, no clock, no global randomness, so the
scheduler stays thin and every rule is property-tested. `decide` runs once per poll on the hot path, so it
does the least work that keeps the rules readable.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from watcher.clock import parse_timestamp
from watcher.events import transition_event, verdict_event
from watcher.models import TERMINAL_STATUSES, FinalState, NewEvent, PollOutcome, PollResult, SavedPoll, Watch
from watcher.statuses import status_name

# Beyond this many doublings every realistic error backoff has long hit its cap; clamping the exponent
# keeps `2.0 ** n` finite for any count a long-broken upstream can accumulate.
_MAX_ERROR_EXPONENT = 1000

Route = Callable[[str, Watch], tuple[str, ...]]


class Pace(Protocol):
    """The delay before the next poll of a running job instead of the backoff curve (adaptive polling)."""

    def __call__(
        self, watch: Watch, body: dict[str, Any], streak: int, now: float, rng: random.Random
    ) -> float: ...


@dataclass(frozen=True, slots=True)
class PollingPolicy:
    """The `[polling]` settings the decisions need; field names match the config keys."""

    initial_interval_s: float
    multiplier: float
    max_interval_s: float
    jitter: float  # fraction: the delay is scaled by U[1 - jitter, 1 + jitter]
    max_watch_s: float  # then the job is `expired`
    not_found_limit: int  # consecutive 404s, then the job is `missing`
    error_backoff_max_s: float
    # Status names that end a watch (`[upstream] terminal_statuses`, named as `statuses.status_name` does).
    terminal_statuses: frozenset[str] = field(default=TERMINAL_STATUSES)


@dataclass(slots=True)  # not frozen: made once per poll (see `PollResult`)
class Decision:
    """What one poll (or a missed deadline) did to a watch: the state to save and why."""

    saved: SavedPoll  # the new watch (same lease) and the events to write with it
    previous_status: str | None  # the status before this poll
    transition: bool  # the upstream status changed (the first observation included)
    final: str | None  # set when polling stops: a terminal status name, or a `FinalState` verdict
    detection_lag_s: float | None  # now - upstream `updatedAt` of a transition; None if unknown


def poll_delay(streak: int, policy: PollingPolicy, rng: random.Random) -> float:
    """The jittered delay before the next poll after `streak` polls without a status change.

    `min(max_interval, initial * multiplier**streak)` scaled by U[1 - jitter, 1 + jitter] (SPEC §5).
    """
    try:
        base = policy.initial_interval_s * policy.multiplier**streak
    except OverflowError:  # a streak of thousands: the cap was reached long ago
        base = policy.max_interval_s
    base = min(policy.max_interval_s, base)
    jitter = policy.jitter
    if jitter <= 0.0:
        return base
    return base * rng.uniform(1.0 - jitter, 1.0 + jitter)


def error_delay(
    errors: int, policy: PollingPolicy, rng: random.Random, retry_after_s: float | None = None
) -> float:
    """The delay after the `errors`-th consecutive failed poll: exponential backoff with full jitter.

    Drawn from U(floor, min(error_backoff_max_s, initial * 2**(errors-1))) where the floor, a tenth of the
    smallest sensible delay, keeps a broken upstream from being hammered in a hot loop. Never shorter than
    a 429's Retry-After, even beyond the cap: the upstream asked for it.
    """
    cap = policy.error_backoff_max_s
    exponent = min(max(errors, 1) - 1, _MAX_ERROR_EXPONENT)
    ceiling = min(cap, policy.initial_interval_s * 2.0**exponent)
    floor = 0.1 * min(policy.initial_interval_s, cap)
    delay = rng.uniform(floor, ceiling) if ceiling > floor else floor
    if retry_after_s is not None and retry_after_s > delay:
        return retry_after_s
    return delay


def first_due(now: float, spread_s: float, rng: random.Random) -> float:
    """A first poll time in [now, now + spread_s], so restored watches do not all fire at start-up."""
    if spread_s <= 0.0:
        return now
    return now + rng.uniform(0.0, spread_s)


def deadline(watch: Watch, policy: PollingPolicy) -> float:
    """When the watch expires: its registration time plus its own or the default `max_watch_s`."""
    limit = watch.max_watch_s if watch.max_watch_s is not None else policy.max_watch_s
    return watch.registered_at + limit


def is_expired(watch: Watch, now: float, policy: PollingPolicy) -> bool:
    """True if an unfinished watch has reached its deadline; a finished watch never expires."""
    return watch.final is None and now >= deadline(watch, policy)


def decide(
    watch: Watch,
    result: PollResult | None,
    now: float,
    policy: PollingPolicy,
    rng: random.Random,
    route: Route,
    pace: Pace | None = None,
) -> Decision:
    """The watch's next state after one poll result, or after its deadline passed unpolled (`result` None).

    The input watch is never mutated: the new state is a copy that keeps the claim's lease. A watch past
    its deadline whose poll did happen is still decided on that poll; expiry is only for polls that did not.
    `pace` (adaptive polling, SPEC §12) replaces the backoff curve after a poll that saw the job running;
    errors, 404s and Retry-After keep their own delays.
    """
    if result is None:
        return _expire(watch, now, policy, route)
    if result.outcome is PollOutcome.OK:
        body = result.body
        status = body.get("status") if body is not None else None
        if body is not None and isinstance(status, str):
            return _observed(watch, body, status_name(status), now, policy, rng, route, pace)
        # The upstream client should have classified this as invalid; do not crash on its mistake.
        result = replace(result, outcome=PollOutcome.INVALID_RESPONSE, detail="ok response without a status")
    if result.outcome is PollOutcome.NOT_FOUND:
        return _not_found(watch, now, policy, rng, route)
    return _failed(watch, result, now, policy, rng)


def postpone(watch: Watch, until: float) -> Decision:
    """A decision without a poll: the watch unchanged but not due before `until` (a throttled workspace)."""
    new = watch.copy()
    new.next_poll_at = max(watch.next_poll_at, until)
    return Decision(SavedPoll(new), watch.status, False, None, None)


def _expire(watch: Watch, now: float, policy: PollingPolicy, route: Route) -> Decision:
    limit = deadline(watch, policy) - watch.registered_at
    new = watch.copy()
    new.final = FinalState.EXPIRED
    new.finished_at = now
    event = verdict_event(new, FinalState.EXPIRED, now, f"not finished within max_watch_s={limit:g}")
    saved = SavedPoll(new, (NewEvent(event, route(event.type, new)),))
    return Decision(saved, watch.status, False, FinalState.EXPIRED, None)


def _observed(
    watch: Watch,
    body: dict[str, Any],
    status: str,
    now: float,
    policy: PollingPolicy,
    rng: random.Random,
    route: Route,
    pace: Pace | None,
) -> Decision:
    # `status` is already the watcher's name for it: lower-cased, so a case-only change is no transition.
    previous = watch.status
    changed = status != previous  # the first observation (previous None) counts as a change
    streak = 0 if changed else watch.streak + 1
    updated = body.get("updatedAt")
    new = watch.copy()
    new.status = status
    new.polls = watch.polls + 1
    new.streak = streak
    new.errors = 0
    new.not_found = 0
    new.last_polled_at = now
    new.last_error = None
    new.upstream_updated_at = updated if isinstance(updated, str) else None
    final: str | None = None
    if status in policy.terminal_statuses:
        final = status
        new.final = final
        new.finished_at = now
    else:
        delay = poll_delay(streak, policy, rng) if pace is None else pace(new, body, streak, now, rng)
        new.next_poll_at = min(now + delay, deadline(watch, policy))
    if not changed:
        return Decision(SavedPoll(new), previous, False, final, None)
    event = transition_event(new, body, previous, now)
    updated_ts = parse_timestamp(updated)
    lag = None if updated_ts is None else now - updated_ts
    saved = SavedPoll(new, (NewEvent(event, route(event.type, new)),))
    return Decision(saved, previous, True, final, lag)


def _not_found(watch: Watch, now: float, policy: PollingPolicy, rng: random.Random, route: Route) -> Decision:
    not_found = watch.not_found + 1
    # A 404 is an answer, not an upstream failure: it ends the error backoff.
    new = watch.copy()
    new.polls = watch.polls + 1
    new.not_found = not_found
    new.errors = 0
    new.last_polled_at = now
    if not_found >= policy.not_found_limit:
        new.final = FinalState.MISSING
        new.finished_at = now
        event = verdict_event(new, FinalState.MISSING, now, f"{not_found} consecutive 404 responses")
        saved = SavedPoll(new, (NewEvent(event, route(event.type, new)),))
        return Decision(saved, watch.status, False, FinalState.MISSING, None)
    # A job that is not visible yet is polled gently, backing off like an unchanged status.
    new.streak = watch.streak + 1
    new.next_poll_at = min(now + poll_delay(new.streak, policy, rng), deadline(watch, policy))
    return Decision(SavedPoll(new), watch.status, False, None, None)


def _failed(
    watch: Watch, result: PollResult, now: float, policy: PollingPolicy, rng: random.Random
) -> Decision:
    errors = watch.errors + 1
    delay = error_delay(errors, policy, rng, result.retry_after_s)
    # A Retry-After beyond the deadline is capped by it: the job then expires instead of waiting on.
    next_poll_at = min(now + delay, deadline(watch, policy))
    new = watch.copy()
    new.polls = watch.polls + 1
    new.errors = errors
    new.last_polled_at = now
    new.last_error = result.detail or result.outcome.value
    new.next_poll_at = next_poll_at
    return Decision(SavedPoll(new), watch.status, False, None, None)
