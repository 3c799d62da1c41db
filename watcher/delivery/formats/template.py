"""Format `template`: the operator's own JSON body from a Jinja2 template (SPEC §15).

The context is the standard body (`type`, `timestamp`, `data`); the environment is the bounded sandbox of
`watcher.delivery.formats.sandbox` (its docstring says what is refused and how CPU and memory are bounded).
Undefined names are errors (`StrictUndefined`): a template that reads a field an event lacks says so with
`| default(...)`, instead of sending a body with a hole in it. The output must be strict JSON (RFC 8259:
no NaN, no Infinity) of at most 256 KiB.

`validate_template` compiles a template and renders a sample `job.failed` event with it at start-up, so a
broken template is a config error naming its key (exit 2) rather than a dead delivery per event.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import jinja2
from jinja2.exceptions import SecurityError

from watcher import strictjson
from watcher.delivery.formats.base import FormatSettings, Rendered, RenderError, one_line, rfc3339, safe_epoch
from watcher.delivery.formats.sandbox import (
    DEADLINE_S,
    ENVIRONMENT,
    MAX_STEPS,
    TemplateLimit,
    bounded,
    new_budget,
)
from watcher.errors import ConfigError
from watcher.models import Event

MAX_OUTPUT_BYTES: Final = 256 * 1024
MAX_SOURCE_CHARS: Final = 256 * 1024
MAX_OUTPUT_DEPTH: Final = strictjson.MAX_DEPTH

SAMPLE_EVENT: Final = Event(
    id="0b7c6f1e-2d4a-5e8f-9a1b-3c5d7e9f1a2b",
    job_id="5135bfe3-b2c7-41f3-a44f-f4b58e7384df",
    workspace="acme",
    type="job.failed",
    created_at=1_775_038_723.12,
    payload={
        "type": "job.failed",
        "timestamp": "2026-04-01T10:18:43.120Z",
        "data": {
            "job": {
                "id": "5135bfe3-b2c7-41f3-a44f-f4b58e7384df",
                "createdAt": "2026-04-01T10:16:00.000Z",
                "updatedAt": "2026-04-01T10:18:42.000Z",
                "jobProviderId": "b9eb98d0-2445-46a3-8107-4fcf243f85e4",
                "name": "customer.createBatch",
                "status": "failed",
                "error": 'row 17: "email" is not an email address',
                "workspaceId": "6f8c7d9d-34e2-4f42-9f5d-8f3c5b16a6af",
            },
            "previous_status": "active",
            "workspace": "acme",
            "labels": {"team": "billing"},
            "detected_at": "2026-04-01T10:18:43.120Z",
            "polls": 7,
        },
    },
)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of JSON's number range")
    return value


def _any_int(text: str) -> int:
    return 0  # JSON sets no size on an integer; only whether it parses matters here, not its value


_STRICT: Final = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_any_int
)


def check_json(body: bytes) -> None:
    """Raise RenderError unless `body` is strict JSON (RFC 8259) of at most 256 KiB, nested at most 64."""
    if len(body) > MAX_OUTPUT_BYTES:
        raise TemplateLimit(f"output is {len(body)} bytes, more than {MAX_OUTPUT_BYTES}")
    if strictjson.nesting_depth(body) > MAX_OUTPUT_DEPTH:
        raise RenderError(f"output nests deeper than {MAX_OUTPUT_DEPTH} levels")
    try:
        _STRICT.decode(body.decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RenderError(f"output is not JSON: {exc}") from None


def context_of(event: Event) -> dict[str, Any]:
    """The template's context: the standard body's `type`, `timestamp` and `data`, made strict JSON."""
    payload = event.payload if isinstance(event.payload, dict) else {}
    data = payload.get("data")
    timestamp = payload.get("timestamp")
    return {
        "type": payload.get("type") if isinstance(payload.get("type"), str) else str(event.type),
        "timestamp": timestamp if isinstance(timestamp, str) else rfc3339(safe_epoch(event.created_at)),
        "data": strictjson.sanitize(data) if isinstance(data, dict) else {},
    }


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RenderError):
        return exc.reason
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"line {exc.lineno}: {exc.message}"
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined: {exc.message}"
    if isinstance(exc, SecurityError):
        return f"refused: {exc}"
    if isinstance(exc, RecursionError):
        return "template recursion is too deep"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class JsonTemplate:
    """A compiled template; `render` is safe to call with any event."""

    source: str = field(repr=False)
    template: jinja2.Template = field(repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    deadline_s: float = DEADLINE_S
    max_steps: int = MAX_STEPS

    def render_text(self, context: dict[str, Any]) -> bytes:
        """The rendered bytes of `context`, or RenderError with a one-line reason."""
        budget = new_budget(self.clock, self.deadline_s, self.max_steps)
        chunks: list[str] = []
        size = 0
        try:
            with bounded(budget):
                for chunk in self.template.generate(context):
                    size += len(chunk)
                    if size > MAX_OUTPUT_BYTES:
                        raise TemplateLimit(f"output is more than {MAX_OUTPUT_BYTES} bytes")
                    chunks.append(chunk)
            body = "".join(chunks).encode("utf-8")
        except Exception as exc:  # a template's failure, whatever it is, is this delivery's alone
            raise RenderError(f"template: {_reason(exc)}") from None
        check_json(body)
        return body

    def render(self, event: Event) -> bytes:
        """The body for `event`."""
        return self.render_text(context_of(event))


def compile_template(source: str) -> JsonTemplate:
    """Compile `source` in the sandbox; RenderError with a one-line reason if it is not a template."""
    if not isinstance(source, str) or not source.strip():
        raise RenderError("the template is empty")
    if len(source) > MAX_SOURCE_CHARS:
        raise RenderError(f"the template is longer than {MAX_SOURCE_CHARS} characters")
    try:
        return JsonTemplate(source, ENVIRONMENT.from_string(source))
    except Exception as exc:  # syntax errors, unknown filters, recursion in the parser
        raise RenderError(_reason(exc)) from None


@functools.lru_cache(maxsize=64)
def _compiled(source: str) -> JsonTemplate:
    return compile_template(source)


def validate_template(source: str, key: str = "template") -> JsonTemplate:
    """Compile `source` and render the sample `job.failed` event with it: the start-up check.

    Raises ConfigError naming `key` (e.g. `webhooks[0].template`) with the reason on one line:
    `webhooks[0].template: line 1: unexpected '}'`,
    `webhooks[0].template: rendering a sample job.failed event: template: undefined: 'dict object' has no
    attribute 'nme'`, `webhooks[0].template: rendering a sample job.failed event: output is not JSON: …`.
    """
    try:
        template = compile_template(source)
    except RenderError as exc:
        raise ConfigError([f"{key}: {exc.reason}"]) from None
    try:
        template.render(SAMPLE_EVENT)
    except RenderError as exc:
        raise ConfigError([f"{key}: rendering a sample job.failed event: {exc.reason}"]) from None
    return template


def render(event: Event, settings: FormatSettings) -> Rendered:
    """The body of `settings.template` for `event`, with the webhook's `content_type`."""
    if not settings.template:
        raise RenderError(f"webhook {one_line(settings.name, 80)!r}: format template needs template")
    return Rendered(_compiled(settings.template).render(event), settings.content_type or "application/json")


__all__ = [
    "MAX_OUTPUT_BYTES",
    "MAX_SOURCE_CHARS",
    "SAMPLE_EVENT",
    "JsonTemplate",
    "check_json",
    "compile_template",
    "context_of",
    "render",
    "validate_template",
]
