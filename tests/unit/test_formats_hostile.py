"""Hostile event data through every alert format: each output is valid for its vendor and within limits.

Events here hold what an upstream or a damaged store could put in them: huge strings, astral and
control characters, lone surrogates, NaN and infinities, numbers where strings belong, missing fields,
grown statuses, nonsense times. The vendor checks are tests/fixtures/vendor/rules.py (sources there and
in test_formats_vendor_shapes.py). A renderer may refuse an event only with a one-line `RenderError`; the
fixed renderers never do.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.vendor import rules
from tests.support.standard_webhooks import strict_json
from watcher.delivery.formats import FormatSettings, RenderError, render, render_group
from watcher.delivery.formats.template import MAX_OUTPUT_BYTES
from watcher.models import Event

# Every code point, surrogates and controls included.
ANY_CHAR = st.characters(codec=None, categories=None)
TEXT = st.text(ANY_CHAR, max_size=40)
# A few long strings: repeated characters make megabyte values cheap to generate.
HUGE = st.builds(
    lambda c, n: c * n,
    st.sampled_from(["x", "😀", "\x00", " ", "é", "\ud800", "\n"]),
    st.sampled_from([300, 5_000, 300_000]),
)
STRINGS = st.one_of(TEXT, HUGE)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), STRINGS
)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)
KINDS = st.one_of(
    st.sampled_from(
        ["failed", "success", "expired", "missing", "slow", "cancelled", "upstream_expired", "unknown"]
    ),
    TEXT,
)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`strategy`, or a value of the wrong kind, or nothing at all (the key left out)."""
    return st.one_of(strategy, JSONISH, st.just(...))


@st.composite
def events(draw: st.DrawFn) -> Event:
    """An event whose payload may lack, mistype or overfill any field."""
    job = {
        key: value
        for key, value in {
            "id": draw(maybe(STRINGS)),
            "name": draw(maybe(STRINGS)),
            "status": draw(maybe(STRINGS)),
            "error": draw(maybe(STRINGS)),
            "extra": draw(maybe(JSONISH)),
        }.items()
        if value is not ...
    }
    data = {
        key: value
        for key, value in {
            "job": draw(st.one_of(st.just(job), JSONISH)),
            "previous_status": draw(maybe(STRINGS)),
            "labels": draw(maybe(st.dictionaries(STRINGS, STRINGS, max_size=30))),
            "reason": draw(maybe(STRINGS)),
            "polls": draw(maybe(st.integers())),
        }.items()
        if value is not ...
    }
    kind = draw(KINDS)
    payload = draw(
        st.one_of(st.just({"type": f"job.{kind}", "timestamp": draw(TEXT), "data": data}), JSONISH)
    )
    return Event(
        id=draw(STRINGS),
        job_id=draw(STRINGS),
        workspace=draw(STRINGS),
        type=draw(st.one_of(st.just(f"job.{kind}"), TEXT)),
        created_at=draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 4e9))),
        payload=payload if isinstance(payload, dict) else {"data": payload},
    )


SETTINGS = FormatSettings(name="hostile", routing_key="k" * 32, alert_duration_s=3600)
HYPOTHESIS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@HYPOTHESIS
@given(events())
def test_every_vendor_format_is_valid_for_any_event(event: Event) -> None:
    """pagerduty, msteams, discord and alertmanager render any event into a body their vendor accepts."""
    for fmt, check in rules.CHECKS.items():
        check(render(fmt, event, SETTINGS).body)


@HYPOTHESIS
@given(st.lists(events(), min_size=1, max_size=25))
def test_every_grouped_format_is_valid_for_any_events(members: list[Event]) -> None:
    """A group of hostile events renders as one valid message in every groupable vendor format."""
    for fmt in ("pagerduty", "msteams", "discord"):
        rules.CHECKS[fmt](render_group(fmt, members, SETTINGS).body)
    text = strict_json(render_group("slack", members, SETTINGS).body)["text"]
    assert 0 < rules.units(text) <= 4000


TEMPLATE = (
    '{"title": {{ (data.job.name | default("?") ~ " " ~ type) | truncate(200) | tojson }},'
    ' "error": {{ data.job.error | default(none) | tojson }},'
    ' "labels": {{ data.labels | default({}) | tojson }},'
    ' "at": {{ timestamp | tojson }}, "all": {{ data | tojson }}}'
)


@HYPOTHESIS
@given(events())
def test_a_template_gives_strict_json_within_256_kib_or_a_one_line_render_error(event: Event) -> None:
    """The template format's output is strict JSON (no NaN) within 256 KiB, or the delivery is refused
    with a one-line reason (e.g. the event's data does not fit in 256 KiB, or its job is not an object)."""
    try:
        body = render("template", event, FormatSettings(template=TEMPLATE)).body
    except RenderError as exc:
        reason = exc.reason
    else:
        reason = ""
    if reason:
        assert "\n" not in reason and len(reason) <= 300
        return
    assert len(body) <= MAX_OUTPUT_BYTES
    doc = strict_json(body)
    assert set(doc) == {"title", "error", "labels", "at", "all"}
