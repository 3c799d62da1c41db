"""Tests of the pure delivery policy (retry delays, next state) and of rendering and classification."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.delivery.bodies import render_body
from watcher.delivery.retry import RETRY_JITTER, next_update, retry_delay
from watcher.delivery.target import WebhookTarget
from watcher.delivery.webhook import SendResult, classify
from watcher.events import transition_event, verdict_event
from watcher.models import Delivery, DeliveryOutcome, DeliveryState, FinalState, Source, Watch

JOB = "5135bfe3-b2c7-41f3-a44f-f4b58e7384df"
NOW = 1_775_000_000.0
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TARGET = WebhookTarget(
    name="ops",
    url="https://hooks.example.com/services/T0/B0/very-secret-path",
    secrets=(SECRET,),
    events=frozenset({"job.failed"}),
    max_attempts=5,
    retry_initial_s=1.0,
    retry_max_s=60.0,
    headers={"x-api-key": "receiver-api-key-123"},
)

targets = st.builds(
    lambda initial, factor, attempts: replace(
        TARGET, retry_initial_s=initial, retry_max_s=initial * factor, max_attempts=attempts
    ),
    st.floats(0.001, 100.0),
    st.floats(1.0, 1000.0),
    st.integers(1, 30),
)
retry_afters = st.none() | st.floats(0.0, 10_000.0)


def _watch(**kw: object) -> Watch:
    w = Watch(job_id=JOB, workspace="acme", sources=int(Source.API), registered_at=NOW, polls=3)
    w.labels = {"team": "billing"}
    for key, value in kw.items():
        setattr(w, key, value)
    return w


def _body(status: str, **extra: object) -> dict[str, object]:
    return {
        "id": JOB,
        "name": "customer.createBatch",
        "status": status,
        "updatedAt": "2026-04-01T10:18:42.000Z",
    } | extra


def _delivery(attempts: int = 0) -> Delivery:
    event = transition_event(_watch(), _body("failed", error="boom"), "active", NOW)
    return Delivery(1, event, "ops", DeliveryState.PENDING, attempts, NOW, NOW)


def _result(kind: DeliveryOutcome, retry_after: float | None = None, detail: str = "HTTP 503") -> SendResult:
    return SendResult(kind, 503, retry_after, detail, 0.01)


class TestRetryDelay:
    """Backoff: exponential from retry_initial_s, capped, jittered, never before Retry-After."""

    @given(target=targets, attempts=st.integers(1, 200), seed=st.integers(0, 2**32), retry_after=retry_afters)
    def test_bounds(self, target: WebhookTarget, attempts: int, seed: int, retry_after: float | None) -> None:
        """The delay lies in [(1-jitter) x nominal, nominal], and is at least the Retry-After."""
        nominal = min(target.retry_max_s, target.retry_initial_s * 2 ** (attempts - 1))
        delay = retry_delay(attempts, target, random.Random(seed), retry_after)
        assert delay >= nominal * (1 - RETRY_JITTER) * (1 - 1e-9)
        assert delay <= max(nominal, retry_after or 0.0) * (1 + 1e-9)
        assert delay <= max(target.retry_max_s, retry_after or 0.0) * (1 + 1e-9)
        if retry_after is not None:
            assert delay >= retry_after

    @given(target=targets, seed=st.integers(0, 2**32))
    def test_grows_with_attempts(self, target: WebhookTarget, seed: int) -> None:
        """With the same random draw, more failed attempts never give a shorter delay."""
        delays = [retry_delay(n, target, random.Random(seed), None) for n in range(1, 40)]
        assert delays == sorted(delays)

    def test_doubles_then_caps(self) -> None:
        """Nominal delays double per attempt from retry_initial_s until retry_max_s."""
        upper = [retry_delay(n, TARGET, _MaxRandom(), None) for n in range(1, 9)]
        assert upper == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]

    def test_jitter_spreads(self) -> None:
        """Many deliveries failing together do not all retry at the same instant."""
        rng = random.Random(7)
        delays = [retry_delay(3, TARGET, rng, None) for _ in range(200)]
        assert min(delays) < 3.3
        assert max(delays) > 3.9
        assert len(set(delays)) > 150


class _MaxRandom(random.Random):
    """A Random whose uniform() always returns its upper bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


class TestNextUpdate:
    """The per-attempt state machine."""

    @given(
        attempts=st.integers(0, 50),
        kind=st.sampled_from(DeliveryOutcome),
        target=targets,
        retry_after=retry_afters,
        seed=st.integers(0, 2**32),
    )
    def test_state_machine(
        self,
        attempts: int,
        kind: DeliveryOutcome,
        target: WebhookTarget,
        retry_after: float | None,
        seed: int,
    ) -> None:
        """Success delivers, 410 kills, a retry is pending until max_attempts is reached, then dead."""
        update = next_update(
            _delivery(attempts), _result(kind, retry_after), NOW, target, random.Random(seed)
        )
        assert update.attempts == attempts + 1
        if kind is DeliveryOutcome.SUCCESS:
            assert update.state is DeliveryState.DELIVERED
            assert update.delivered_at == NOW
            assert update.last_error is None
        elif kind is DeliveryOutcome.DEAD or attempts + 1 >= target.max_attempts:
            assert update.state is DeliveryState.DEAD
            assert update.last_error == "HTTP 503"
            assert update.delivered_at is None
        else:
            assert update.state is DeliveryState.PENDING
            assert update.last_error == "HTTP 503"
            assert update.next_attempt_at > NOW or target.retry_initial_s * (1 - RETRY_JITTER) == 0
            assert update.next_attempt_at >= NOW + (retry_after or 0.0)

    def test_reason_is_short(self) -> None:
        """A long detail is cut so the stored last_error stays small."""
        update = next_update(
            _delivery(), _result(DeliveryOutcome.RETRY, detail="x" * 1000), NOW, TARGET, random.Random(1)
        )
        assert update.last_error is not None
        assert len(update.last_error) <= 200


class TestRenderBody:
    """Bodies are deterministic and shaped per format."""

    def test_standard_is_the_payload_and_deterministic(self) -> None:
        """The standard body is the event payload as compact JSON, byte-identical for the same event."""
        event = _delivery().event
        shuffled = replace(event, payload=dict(reversed(list(event.payload.items()))))
        body = render_body(TARGET, event)
        assert body == render_body(TARGET, shuffled)
        assert json.loads(body) == event.payload
        assert b": " not in body
        assert b", " not in body

    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (
                "failed",
                ":x: job 5135bfe3… (customer.createBatch) failed in workspace acme: boom [team=billing]",
            ),
            (
                "success",
                ":white_check_mark: job 5135bfe3… (customer.createBatch) succeeded in workspace acme",
            ),
        ],
    )
    def test_slack_line(self, status: str, expected: str) -> None:
        """Slack bodies are {"text": one line} naming job, name, outcome, workspace, error and labels."""
        slack = replace(TARGET, format="slack")
        event = transition_event(
            _watch(), _body(status, error="boom" if status == "failed" else None), "active", NOW
        )
        doc = json.loads(render_body(slack, event))
        assert list(doc) == ["text"]
        assert doc["text"].startswith(expected)

    @pytest.mark.parametrize("verdict", [FinalState.EXPIRED, FinalState.MISSING])
    def test_slack_verdicts(self, verdict: FinalState) -> None:
        """The watcher's own verdicts read as one line with their reason."""
        event = verdict_event(_watch(status="active"), verdict, NOW, "watched for 3600 s")
        text = json.loads(render_body(replace(TARGET, format="slack"), event))["text"]
        assert f"{verdict.value} in workspace acme: watched for 3600 s" in text
        assert "\n" not in text


class TestClassify:
    """The transport's classification of HTTP answers."""

    @pytest.mark.parametrize(
        ("status", "kind"),
        [
            (200, DeliveryOutcome.SUCCESS),
            (204, DeliveryOutcome.SUCCESS),
            (410, DeliveryOutcome.DEAD),
            (301, DeliveryOutcome.RETRY),
            (308, DeliveryOutcome.RETRY),
            (400, DeliveryOutcome.RETRY),
            (429, DeliveryOutcome.RETRY),
            (503, DeliveryOutcome.RETRY),
        ],
    )
    def test_kinds(self, status: int, kind: DeliveryOutcome) -> None:
        """2xx succeeds, 410 is dead at once, redirects and other errors are retried."""
        assert classify(status, "", None, NOW, 0.0).kind is kind

    def test_redirect_detail_and_retry_after(self) -> None:
        """A redirect says it was not followed; a 503's Retry-After is parsed into seconds."""
        assert "redirect not followed" in classify(302, "Found", None, NOW, 0.0).detail
        assert classify(503, "Service Unavailable", "7", NOW, 0.0).retry_after_s == 7.0


def test_target_repr_hides_secrets() -> None:
    """Neither secrets, header values nor the URL path appear in a target's repr."""
    text = repr(TARGET)
    for hidden in (SECRET, SECRET.removeprefix("whsec_"), "receiver-api-key-123", "very-secret-path"):
        assert hidden not in text
    assert "ops" in text
    assert "hooks.example.com" in text
    assert "x-api-key" in text
