"""Tests of the pure polling policy: delays, deadlines and the decision taken on each poll result."""

from __future__ import annotations

import copy
import dataclasses
import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.clock import parse_timestamp
from watcher.models import FinalState, PollOutcome, PollResult, Source, Watch
from watcher.polling.policy import (
    PollingPolicy,
    deadline,
    decide,
    error_delay,
    first_due,
    is_expired,
    poll_delay,
)

JOB = "5135bfe3-b2c7-41f3-a44f-f4b58e7384df"
T0 = 1_775_000_000.0
POLICY = PollingPolicy(
    initial_interval_s=2.0,
    multiplier=1.5,
    max_interval_s=60.0,
    jitter=0.2,
    max_watch_s=3600.0,
    not_found_limit=3,
    error_backoff_max_s=120.0,
)

policies = st.builds(
    PollingPolicy,
    initial_interval_s=st.floats(0.01, 100.0),
    multiplier=st.floats(1.0, 10.0),
    max_interval_s=st.floats(100.0, 10_000.0),
    jitter=st.floats(0.0, 0.9),
    max_watch_s=st.floats(1.0, 1e6),
    not_found_limit=st.integers(1, 10),
    error_backoff_max_s=st.floats(0.01, 10_000.0),
)
statuses = st.sampled_from(["created", "queued", "active", "retrying", "success", "failed"])
outcomes = st.sampled_from(list(PollOutcome))


def route_all(event_type: str, watch: Watch) -> tuple[str, ...]:
    """Route every event to one webhook named after its type, so tests can see routing happened."""
    return (f"hook-{event_type}",)


def make_watch(**kw: Any) -> Watch:
    """A fresh watch registered at T0 and claimed with lease 7."""
    fields: dict[str, Any] = {
        "job_id": JOB,
        "workspace": "acme",
        "sources": int(Source.API),
        "registered_at": T0,
        "lease": 7,
    }
    fields.update(kw)
    return Watch(**fields)


def ok(status: str, updated: str = "2026-04-01T10:18:42.000Z") -> PollResult:
    """A successful poll observing `status`."""
    return PollResult(PollOutcome.OK, body={"id": JOB, "status": status, "updatedAt": updated, "extra": 1})


def base_delay(streak: int, policy: PollingPolicy) -> float:
    """The un-jittered delay of SPEC §5, computed independently of the implementation."""
    value = policy.initial_interval_s
    for _ in range(streak):
        value *= policy.multiplier
        if value >= policy.max_interval_s:
            return policy.max_interval_s
    return min(policy.max_interval_s, value)


class TestPollDelay:
    """poll_delay follows min(max, initial * multiplier**n) with a bounded jitter."""

    @given(policies, st.integers(0, 200), st.integers(0, 2**32))
    def test_within_jitter_bounds(self, policy: PollingPolicy, streak: int, seed: int) -> None:
        """The delay stays within base*(1±jitter) and never exceeds max_interval*(1+jitter)."""
        delay = poll_delay(streak, policy, random.Random(seed))
        base = base_delay(streak, policy)
        assert base * (1 - policy.jitter) * (1 - 1e-9) <= delay <= base * (1 + policy.jitter) * (1 + 1e-9)
        assert delay <= policy.max_interval_s * (1 + policy.jitter) * (1 + 1e-9)

    @given(policies)
    def test_base_non_decreasing_and_reaches_max(self, policy: PollingPolicy) -> None:
        """Without jitter the delay never shrinks as the streak grows and ends at max_interval."""
        flat = replace(policy, jitter=0.0, multiplier=max(policy.multiplier, 1.1))
        rng = random.Random(0)
        delays = [poll_delay(n, flat, rng) for n in range(200)]
        assert delays == sorted(delays)
        assert delays[-1] == flat.max_interval_s

    def test_huge_streak_does_not_overflow(self) -> None:
        """A streak far past the cap still gives the capped delay."""
        flat = replace(POLICY, jitter=0.0)
        assert poll_delay(10**6, flat, random.Random(1)) == POLICY.max_interval_s

    @given(st.floats(0.01, 0.9), st.integers(0, 2**32))
    def test_jitter_spreads(self, jitter: float, seed: int) -> None:
        """With jitter, many draws for the same streak are not all equal."""
        rng = random.Random(seed)
        policy = replace(POLICY, jitter=jitter)
        assert len({poll_delay(3, policy, rng) for _ in range(20)}) > 1

    @pytest.mark.parametrize(
        ("streak", "expected"), [(0, 2.0), (1, 3.0), (2, 4.5), (3, 6.75), (10, 60.0), (100, 60.0)]
    )
    def test_examples(self, streak: int, expected: float) -> None:
        """Table of un-jittered delays for the reference policy."""
        assert poll_delay(streak, replace(POLICY, jitter=0.0), random.Random(0)) == pytest.approx(expected)


class TestErrorDelay:
    """error_delay is a capped, fully jittered exponential backoff that honours Retry-After."""

    @given(policies, st.integers(1, 5000), st.integers(0, 2**32), st.none() | st.floats(0.0, 100_000.0))
    def test_bounds(self, policy: PollingPolicy, errors: int, seed: int, retry_after: float | None) -> None:
        """The delay lies between the anti-hot-loop floor and the cap, or equals a longer Retry-After."""
        delay = error_delay(errors, policy, random.Random(seed), retry_after)
        cap = min(policy.error_backoff_max_s, policy.initial_interval_s * 2.0 ** min(errors - 1, 1000))
        floor = 0.1 * min(policy.initial_interval_s, policy.error_backoff_max_s)
        assert delay >= floor
        assert delay >= (retry_after or 0.0)
        if retry_after is None or retry_after <= cap:
            assert delay <= max(cap, floor)

    def test_retry_after_beyond_cap_wins(self) -> None:
        """A Retry-After longer than error_backoff_max_s is obeyed as is."""
        assert error_delay(1, POLICY, random.Random(0), 500.0) == 500.0

    def test_full_jitter_spreads_and_grows(self) -> None:
        """Draws spread over the whole range, and the range doubles with each error."""
        rng = random.Random(3)
        first = [error_delay(1, POLICY, rng) for _ in range(200)]
        fourth = [error_delay(4, POLICY, rng) for _ in range(200)]
        assert min(first) < 0.5
        assert max(first) > 1.8
        assert max(first) <= 2.0
        assert max(fourth) > 14.0
        assert max(fourth) <= 16.0


def test_first_due_spreads_within_window() -> None:
    """First polls land in [now, now + spread] and are not all at once."""
    rng = random.Random(5)
    dues = [first_due(T0, 10.0, rng) for _ in range(100)]
    assert all(T0 <= d <= T0 + 10.0 for d in dues)
    assert max(dues) - min(dues) > 5.0
    assert first_due(T0, 0.0, rng) == T0


def test_deadline_prefers_the_watch_limit() -> None:
    """A watch's own max_watch_s overrides the policy default, which applies otherwise."""
    assert deadline(make_watch(), POLICY) == T0 + 3600.0
    assert deadline(make_watch(max_watch_s=60.0), POLICY) == T0 + 60.0
    assert not is_expired(make_watch(), T0 + 3599.0, POLICY)
    assert is_expired(make_watch(), T0 + 3600.0, POLICY)
    assert not is_expired(make_watch(final="success"), T0 + 9999.0, POLICY)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-04-01T10:18:42.000Z", 1_775_038_722.0),
        ("2026-04-01T10:18:42.250+00:00", 1_775_038_722.25),
        ("2026-04-01T12:18:42+02:00", 1_775_038_722.0),
        ("2026-04-01T10:18:42", 1_775_038_722.0),
        ("yesterday", None),
        ("", None),
        (None, None),
        (12345, None),
    ],
)
def test_parse_timestamp(value: object, expected: float | None) -> None:
    """ISO-8601 timestamps parse to epoch seconds (UTC when no offset); anything else is None."""
    assert parse_timestamp(value) == expected


class TestDecide:
    """decide turns one poll result into the watch's next state and its events."""

    def test_first_observation_is_a_transition(self) -> None:
        """The first OK poll emits job.<status> with previous_status null and resets the streak."""
        watch = make_watch()
        d = decide(watch, ok("active"), T0 + 10.0, POLICY, random.Random(0), route_all)
        new = d.saved.watch
        assert d.transition
        assert d.previous_status is None
        assert d.final is None
        assert (new.status, new.streak, new.polls, new.lease) == ("active", 0, 1, 7)
        assert new.upstream_updated_at == "2026-04-01T10:18:42.000Z"
        assert [e.event.type for e in d.saved.events] == ["job.active"]
        assert d.saved.events[0].webhooks == ("hook-job.active",)
        assert d.saved.events[0].event.payload["data"]["previous_status"] is None
        assert d.saved.events[0].event.payload["data"]["job"]["extra"] == 1
        assert T0 + 10.0 + 2.0 * 0.8 <= new.next_poll_at <= T0 + 10.0 + 2.0 * 1.2
        assert d.detection_lag_s == pytest.approx(T0 + 10.0 - 1_775_038_722.0)

    def test_unchanged_status_backs_off_silently(self) -> None:
        """The same status again increments the streak and emits nothing."""
        watch = make_watch(status="active", streak=2, polls=5)
        d = decide(watch, ok("active"), T0 + 10.0, POLICY, random.Random(0), route_all)
        assert not d.transition
        assert d.saved.events == ()
        assert d.detection_lag_s is None
        assert (d.saved.watch.streak, d.saved.watch.polls) == (3, 6)

    def test_terminal_status_finishes(self) -> None:
        """success/failed stop polling with the matching final state and one event."""
        watch = make_watch(status="active", streak=4, next_poll_at=T0 + 5.0)
        d = decide(watch, ok("failed"), T0 + 20.0, POLICY, random.Random(0), route_all)
        new = d.saved.watch
        assert d.final == FinalState.FAILED
        assert new.final == "failed"
        assert new.finished_at == T0 + 20.0
        assert new.finished
        assert new.next_poll_at == T0 + 5.0
        assert [e.event.type for e in d.saved.events] == ["job.failed"]
        assert d.saved.events[0].event.payload["data"]["previous_status"] == "active"

    def test_unparsable_updated_at_gives_no_lag(self) -> None:
        """A transition whose updatedAt does not parse still happens, without a detection lag."""
        d = decide(make_watch(), ok("queued", updated="soon"), T0, POLICY, random.Random(0), route_all)
        assert d.transition
        assert d.detection_lag_s is None

    def test_expiry_without_a_poll(self) -> None:
        """A missed deadline ends the watch as expired with a job.expired event."""
        watch = make_watch(status="active", polls=9)
        d = decide(watch, None, T0 + 4000.0, POLICY, random.Random(0), route_all)
        assert d.final == FinalState.EXPIRED
        assert not d.transition
        assert d.saved.watch.final == "expired"
        assert d.saved.watch.finished_at == T0 + 4000.0
        assert [e.event.type for e in d.saved.events] == ["job.expired"]
        assert d.saved.events[0].webhooks == ("hook-job.expired",)

    def test_not_found_limit_gives_missing(self) -> None:
        """not_found_limit consecutive 404s end the watch as missing; earlier ones back off gently."""
        rng = random.Random(0)
        watch = make_watch()
        for i in range(POLICY.not_found_limit - 1):
            d = decide(watch, PollResult(PollOutcome.NOT_FOUND), T0 + i, POLICY, rng, route_all)
            watch = d.saved.watch
            assert d.final is None
            assert d.saved.events == ()
            assert watch.streak == i + 1
        d = decide(watch, PollResult(PollOutcome.NOT_FOUND), T0 + 9, POLICY, rng, route_all)
        assert d.final == FinalState.MISSING
        assert d.saved.watch.final == "missing"
        assert [e.event.type for e in d.saved.events] == ["job.missing"]

    def test_ok_between_404s_resets_the_count(self) -> None:
        """An OK poll between 404s restarts the consecutive count."""
        rng = random.Random(0)
        watch = make_watch(not_found=POLICY.not_found_limit - 1)
        watch = decide(watch, ok("queued"), T0, POLICY, rng, route_all).saved.watch
        assert watch.not_found == 0
        d = decide(watch, PollResult(PollOutcome.NOT_FOUND), T0 + 1, POLICY, rng, route_all)
        assert d.final is None
        assert d.saved.watch.not_found == 1

    def test_error_keeps_status_and_records_reason(self) -> None:
        """A failed poll backs off, keeps status, streak and not_found, and records why."""
        watch = make_watch(status="active", streak=3, not_found=1, errors=2)
        result = PollResult(PollOutcome.SERVER_ERROR, status_code=503, detail="HTTP 503")
        d = decide(watch, result, T0 + 50.0, POLICY, random.Random(0), route_all)
        new = d.saved.watch
        assert (new.status, new.streak, new.not_found, new.errors) == ("active", 3, 1, 3)
        assert new.last_error == "HTTP 503"
        assert d.saved.events == ()
        assert T0 + 50.0 < new.next_poll_at <= T0 + 50.0 + 8.0
        d = decide(watch, PollResult(PollOutcome.TIMEOUT), T0, POLICY, random.Random(0), route_all)
        assert d.saved.watch.last_error == "timeout"

    def test_retry_after_past_deadline_is_capped(self) -> None:
        """A Retry-After beyond the deadline schedules the next look at the deadline itself."""
        result = PollResult(PollOutcome.RATE_LIMITED, status_code=429, retry_after_s=10_000.0)
        d = decide(make_watch(), result, T0 + 3500.0, POLICY, random.Random(0), route_all)
        assert d.saved.watch.next_poll_at == T0 + 3600.0

    def test_poll_after_deadline_is_still_decided(self) -> None:
        """A poll that happened after the deadline counts; the next look is due at once (then expiry)."""
        d = decide(
            make_watch(status="active"), ok("active"), T0 + 5000.0, POLICY, random.Random(0), route_all
        )
        assert d.final is None
        assert d.saved.watch.polls == 1
        assert d.saved.watch.next_poll_at == T0 + 3600.0
        d = decide(
            make_watch(status="active"), ok("success"), T0 + 5000.0, POLICY, random.Random(0), route_all
        )
        assert d.final == FinalState.SUCCESS

    def test_ok_without_status_is_an_error(self) -> None:
        """An OK result with no usable body is treated as an invalid response, never a transition."""
        result = PollResult(PollOutcome.OK, body={"id": JOB})
        d = decide(make_watch(), result, T0, POLICY, random.Random(0), route_all)
        assert not d.transition
        assert d.saved.events == ()
        assert d.saved.watch.errors == 1

    @settings(max_examples=200)
    @given(
        policies,
        st.lists(st.tuples(outcomes, statuses, st.floats(0.0, 2e6)), min_size=1, max_size=20),
        st.integers(0, 2**32),
    )
    def test_invariants_over_random_histories(
        self, policy: PollingPolicy, steps: list[tuple[PollOutcome, str, float]], seed: int
    ) -> None:
        """Over any history: no mutation, streak rules, deadline bound, events only on changes or verdicts."""
        rng = random.Random(seed)
        watch = make_watch()
        now = T0
        for outcome, status, dt in steps:
            if watch.finished:
                break
            now += dt
            result = ok(status) if outcome is PollOutcome.OK else PollResult(outcome, retry_after_s=dt)
            before = copy.deepcopy(watch)
            d = decide(watch, result, now, policy, rng, route_all)
            new = d.saved.watch
            assert watch == before, "the input watch was mutated"
            assert new is not watch
            assert new.lease == watch.lease
            assert new.polls == watch.polls + 1
            if new.final is None:
                assert new.next_poll_at <= deadline(watch, policy)
            if outcome is PollOutcome.OK:
                assert new.streak == (0 if status != watch.status else watch.streak + 1)
                assert len(d.saved.events) == (1 if status != watch.status else 0)
                assert d.transition == (status != watch.status)
                assert (new.final is not None) == (status in ("success", "failed"))
            elif outcome is PollOutcome.NOT_FOUND:
                assert new.not_found == watch.not_found + 1
                assert len(d.saved.events) == (1 if new.final == "missing" else 0)
            else:
                assert d.saved.events == ()
                assert new.status == watch.status
                assert new.streak == watch.streak
                assert new.not_found == watch.not_found
                assert new.errors == watch.errors + 1
            watch = new

    @given(statuses, st.integers(0, 2**32))
    def test_double_detection_gives_the_same_event_id(self, status: str, seed: int) -> None:
        """The same body seen by two decisions (e.g. after a restart) yields the same event id."""
        first = decide(make_watch(), ok(status), T0 + 1, POLICY, random.Random(seed), route_all)
        again = decide(make_watch(polls=3), ok(status), T0 + 99, POLICY, random.Random(seed + 1), route_all)
        assert first.saved.events[0].event.id == again.saved.events[0].event.id
        other = decide(
            make_watch(), ok(status, "2026-04-01T10:19:00.000Z"), T0, POLICY, random.Random(0), route_all
        )
        assert other.saved.events[0].event.id != first.saved.events[0].event.id


class TestGrownStatuses:
    """SPEC §2: a status outside the documented list is a transition like any other, not an error."""

    def test_a_grown_status_is_a_transition_on_the_normal_curve(self) -> None:
        """`cancelled` (not terminal by default): job.cancelled, errors stay 0, the next poll follows the
        backoff curve of an unchanged status (streak reset), never the error backoff."""
        watch = make_watch(status="active", streak=5, polls=6, errors=0)
        d = decide(watch, ok("cancelled"), T0 + 10.0, POLICY, random.Random(0), route_all)
        new = d.saved.watch
        assert d.transition and d.final is None and not new.finished
        assert [e.event.type for e in d.saved.events] == ["job.cancelled"]
        assert d.saved.events[0].event.payload["data"]["previous_status"] == "active"
        assert (new.status, new.streak, new.errors, new.last_error) == ("cancelled", 0, 0, None)
        assert T0 + 10.0 + 2.0 * 0.8 <= new.next_poll_at <= T0 + 10.0 + 2.0 * 1.2

    def test_case_only_change_is_no_transition(self) -> None:
        """CANCELLED then cancelled: one transition, then an unchanged status backing off."""
        first = decide(make_watch(status="active"), ok("CANCELLED"), T0, POLICY, random.Random(0), route_all)
        assert [e.event.type for e in first.saved.events] == ["job.cancelled"]
        assert first.saved.events[0].event.payload["data"]["job"]["status"] == "CANCELLED"  # as received
        again = decide(first.saved.watch, ok("cancelled"), T0 + 5, POLICY, random.Random(0), route_all)
        assert not again.transition and again.saved.events == ()
        assert again.saved.watch.streak == 1
        upper = decide(make_watch(status="active"), ok("FAILED"), T0, POLICY, random.Random(0), route_all)
        assert upper.final == "failed" and [e.event.type for e in upper.saved.events] == ["job.failed"]

    def test_terminal_statuses_end_the_watch(self) -> None:
        """With cancelled among the terminal statuses it finishes the watch, final `cancelled`."""
        policy = replace(POLICY, terminal_statuses=frozenset({"success", "failed", "cancelled"}))
        d = decide(make_watch(status="active"), ok("Cancelled"), T0 + 3, policy, random.Random(0), route_all)
        new = d.saved.watch
        assert d.final == "cancelled" and new.final == "cancelled" and new.finished_at == T0 + 3
        assert [e.event.type for e in d.saved.events] == ["job.cancelled"]
        assert d.saved.events[0].webhooks == ("hook-job.cancelled",)
        only_success = replace(POLICY, terminal_statuses=frozenset({"success"}))
        d = decide(make_watch(), ok("failed"), T0, only_success, random.Random(0), route_all)
        assert d.final is None and d.saved.watch.next_poll_at > T0

    def test_reserved_and_odd_values(self) -> None:
        """`expired` from the upstream is job.upstream_expired (no watcher verdict); a value that is no
        name is job.unknown with the raw value in data.job; two odd values differ, so they transition."""
        d = decide(make_watch(status="active"), ok("expired"), T0, POLICY, random.Random(0), route_all)
        assert (d.final, d.saved.watch.status) == (None, "upstream_expired")
        assert [e.event.type for e in d.saved.events] == ["job.upstream_expired"]
        d = decide(make_watch(status="active"), ok("On Hold!"), T0, POLICY, random.Random(0), route_all)
        assert [e.event.type for e in d.saved.events] == ["job.unknown"]
        assert d.saved.events[0].event.payload["data"]["job"]["status"] == "On Hold!"
        d2 = decide(
            d.saved.watch, ok("Held?", "2026-04-01T11:00:00Z"), T0 + 1, POLICY, random.Random(0), route_all
        )
        assert d2.transition and [e.event.type for e in d2.saved.events] == ["job.unknown"]
        assert d2.saved.events[0].event.id != d.saved.events[0].event.id


def test_watch_copy_carries_every_field() -> None:
    """`Watch.copy`, the policy's fast `dataclasses.replace`, misses no field, new ones included."""
    w = Watch(job_id="j", workspace="w", sources=1, registered_at=0.0)
    marks = {f.name: object() for f in dataclasses.fields(Watch)}
    for name, mark in marks.items():
        setattr(w, name, mark)
    c = w.copy()
    assert c is not w
    assert all(getattr(c, name) is mark for name, mark in marks.items())
