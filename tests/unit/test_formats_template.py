"""Format `template`: the context, the filters, the start-up check, the run-time failures and the bounds."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from tests.support.standard_webhooks import strict_json
from watcher.delivery.formats import FormatSettings, RenderError, render
from watcher.delivery.formats.sandbox import ENVIRONMENT, MAX_ALLOC_CHARS
from watcher.delivery.formats.template import (
    MAX_OUTPUT_BYTES,
    SAMPLE_EVENT,
    compile_template,
    validate_template,
)
from watcher.errors import ConfigError
from watcher.models import Event

KEY = "webhooks[0].template"


def out(source: str, event: Event = SAMPLE_EVENT, **settings: Any) -> Any:
    """The JSON a template renders for `event`."""
    return strict_json(render("template", event, FormatSettings(template=source, **settings)).body)


def with_job(**job: Any) -> Event:
    """The sample event with its job's fields replaced by `job`."""
    payload = json.loads(json.dumps(SAMPLE_EVENT.payload))
    payload["data"]["job"] = job
    return dataclasses.replace(SAMPLE_EVENT, payload=payload)


class TestContextAndFilters:
    """The context is the standard body; the filters are SPEC §15's and no others."""

    def test_the_context_is_type_timestamp_and_data(self) -> None:
        """`type`, `timestamp` and `data` are the standard body's."""
        doc = out('{"t": {{ type | tojson }}, "at": {{ timestamp | tojson }}, "d": {{ data | tojson }}}')
        assert doc == {"t": "job.failed", "at": "2026-04-01T10:18:43.120Z", "d": SAMPLE_EVENT.payload["data"]}

    def test_exactly_the_spec_filters_and_no_globals(self) -> None:
        """tojson, default, lower, upper, truncate, replace, join, round, datetime; nothing global."""
        assert set(ENVIRONMENT.filters) == {
            "tojson", "default", "lower", "upper", "truncate", "replace", "join", "round", "datetime",
        }  # fmt: skip
        assert dict(ENVIRONMENT.globals) == {}

    def test_each_filter(self) -> None:
        """Each allowed filter does what its name says."""
        source = (
            '{"lower": {{ "AbC" | lower | tojson }}, "upper": {{ data.workspace | upper | tojson }},'
            ' "default": {{ data.job.nope | default("none") | tojson }},'
            ' "truncate": {{ "one two three four" | truncate(9, end="…") | tojson }},'
            ' "replace": {{ data.job.name | replace(".", "/") | tojson }},'
            ' "join": {{ data.labels.keys() | join("+") | tojson }}, "round": {{ 2.675 | round(1) }},'
            ' "datetime": {{ timestamp | datetime("%d %b %Y %H:%M") | tojson }}}'
        )
        assert out(source) == {
            "lower": "abc",
            "upper": "ACME",
            "default": "none",
            "truncate": "one two…",
            "replace": "customer/createBatch",
            "join": "team",
            "round": 2.7,
            "datetime": "01 Apr 2026 10:18",
        }

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ('"2026-04-01T10:18:43.120Z"', "2026-04-01T10:18:43Z"),
            ('"2026-04-01T12:18:43+02:00"', "2026-04-01T10:18:43Z"),
            ('"2026-04-01T10:18:43"', "2026-04-01T10:18:43Z"),
            ("1775038723", "2026-04-01T10:18:43Z"),
        ],
    )
    def test_datetime_reads_iso_times_and_epoch_seconds_as_utc(self, value: str, expected: str) -> None:
        """`datetime` takes ISO 8601 (Z, an offset, or none = UTC) or epoch seconds; default format ISO."""
        assert out("{{ " + value + " | datetime | tojson }}") == expected

    def test_datetime_of_a_non_time_fails_the_render(self) -> None:
        """A value that is no time makes the delivery fail with a reason that says so."""
        with pytest.raises(RenderError, match="datetime: 'soon' is not an ISO time"):
            out('{{ "soon" | datetime | tojson }}')

    def test_tojson_is_strict_and_sorted(self) -> None:
        """NaN and infinities in data become null; keys come out sorted."""
        nan = dataclasses.replace(
            SAMPLE_EVENT,
            payload={"type": "job.failed", "timestamp": "t", "data": {"b": float("nan"), "a": 1}},
        )
        body = render("template", nan, FormatSettings(template="{{ data | tojson }}")).body
        assert body == b'{"a": 1, "b": null}'

    def test_content_type_comes_from_the_settings(self) -> None:
        """`content_type` is sent as configured; application/json by default."""
        settings = FormatSettings(template="{}", content_type="application/vnd.acme+json")
        assert render("template", SAMPLE_EVENT, settings).content_type == "application/vnd.acme+json"
        assert (
            render("template", SAMPLE_EVENT, FormatSettings(template="{}")).content_type == "application/json"
        )

    def test_jinja2_is_at_least_3_1_6(self) -> None:
        """The installed Jinja2 has the fix for the last published sandbox escape (CVE-2025-27516)."""
        version = tuple(int(p) for p in importlib.metadata.version("Jinja2").split(".")[:3])
        assert version >= (3, 1, 6)


class TestStartupCheck:
    """`validate_template`: a broken template is a config error naming its key, with the reason."""

    @pytest.mark.parametrize(
        ("source", "reason"),
        [
            ('{"a": {{ data.job.name }', f"{KEY}: line 1: unexpected '}}'"),
            ("{{ data | sort | tojson }}", f"{KEY}: line 1: No filter named 'sort'."),
            (
                '{"a": {{ data.job.nme | tojson }}}',
                f"{KEY}: rendering a sample job.failed event: template: undefined: "
                "'dict object' has no attribute 'nme'",
            ),
            (
                '{"a": {{ data.job.name }}}',
                f"{KEY}: rendering a sample job.failed event: output is not JSON: "
                "Expecting value: line 1 column 7 (char 6)",
            ),
            ("  ", f"{KEY}: the template is empty"),
            ("x" * (256 * 1024 + 1), f"{KEY}: the template is longer than 262144 characters"),
        ],
    )
    def test_the_error_text(self, source: str, reason: str) -> None:
        """The one line an operator sees (exit 2) names the key and the problem."""
        with pytest.raises(ConfigError) as caught:
            validate_template(source, KEY)
        assert caught.value.problems == [reason]

    def test_a_good_template_passes_and_is_returned_compiled(self) -> None:
        """A valid template passes the check and renders the sample event."""
        template = validate_template('{"job": {{ data.job.name | tojson }}}', KEY)
        assert strict_json(template.render(SAMPLE_EVENT)) == {"job": "customer.createBatch"}


class TestRunTime:
    """A template that fails for one event fails that delivery with one line, never anything else."""

    def test_a_field_the_event_lacks_is_a_render_error(self) -> None:
        """A template that passed the check meets an expired event without an error field."""
        template = validate_template('{"e": {{ data.job.error | tojson }}}', KEY)
        with pytest.raises(RenderError) as caught:
            template.render(with_job(id="j"))
        assert caught.value.reason == "template: undefined: 'dict object' has no attribute 'error'"

    def test_default_makes_a_template_fit_every_event(self) -> None:
        """With `default`, the same template renders an event that lacks the field."""
        template = validate_template('{"e": {{ data.job.error | default(none) | tojson }}}', KEY)
        assert strict_json(template.render(with_job(id="j"))) == {"e": None}

    def test_output_over_256_kib_is_refused_and_under_it_passes(self) -> None:
        """An error of 300,000 characters cannot be sent whole; one of 200,000 can."""
        template = compile_template('{"e": "{{ data.job.error }}"}')
        assert len(template.render(with_job(error="e" * 200_000))) <= MAX_OUTPUT_BYTES
        with pytest.raises(RenderError, match="more than 262144 bytes"):
            template.render(with_job(error="e" * 300_000))

    def test_the_step_budget_stops_a_long_loop(self) -> None:
        """A loop over a large list runs out of steps; the same template with few items does not."""
        source = "[{% for x in data.job.steps %}{{ x }},{% endfor %}0]"
        template = dataclasses.replace(compile_template(source), max_steps=1_000)
        assert strict_json(template.render(with_job(steps=list(range(10))))) == [*range(10), 0]
        with pytest.raises(RenderError, match="more than 1000 steps"):
            template.render(with_job(steps=list(range(100_000))))

    def test_the_deadline_stops_a_slow_render(self) -> None:
        """With a clock that jumps a minute at every look, a long render is stopped by its time bound."""
        now = [0.0]

        def clock() -> float:
            now[0] += 60.0
            return now[0]

        source = "[{% for x in data.job.steps %}{{ x }},{% endfor %}0]"
        template = dataclasses.replace(compile_template(source), clock=clock)
        with pytest.raises(RenderError, match="longer than its time bound"):
            template.render(with_job(steps=list(range(10_000))))

    def test_the_allocation_budget_is_per_render(self) -> None:
        """A template that makes most of the budget renders every time: each render has its own."""
        per_value = 250_000
        count = MAX_ALLOC_CHARS // per_value - 1
        source = "".join(f"{{% set v{i} = 'a' * {per_value} %}}" for i in range(count)) + "{}"
        template = validate_template(source, KEY)
        for _ in range(3):
            assert template.render(SAMPLE_EVENT) == b"{}"

    def test_a_tracer_already_installed_is_put_back(self) -> None:
        """The step counter restores the thread's previous trace function, after success and failure."""
        calls: list[str] = []

        def tracer(frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
            calls.append(event)
            return None

        previous = sys.gettrace()
        sys.settrace(tracer)
        try:
            compile_template("{}").render(SAMPLE_EVENT)
            assert sys.gettrace() is tracer
            with pytest.raises(RenderError):
                compile_template("{{ nope }}").render(SAMPLE_EVENT)
            assert sys.gettrace() is tracer
        finally:
            sys.settrace(previous)
        assert calls  # it kept tracing this test's own calls
