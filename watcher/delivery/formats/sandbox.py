"""The Jinja2 environment of the `template` format: a sandbox with bounded memory and CPU (SPEC §15).

A webhook template is operator configuration, but it renders data that arrives from outside, and a
mistaken or hostile template must cost one dead delivery, never the daemon. Jinja's
`ImmutableSandboxedEnvironment` stops attribute walks (`__class__`, `__globals__`, …), mutation and the
`str.format` family; on top of it:

- **Nothing to call but what is listed.** No globals at all (no `range`, `lipsum`, `cycler`, `joiner`,
  `namespace`, `dict`), only the filters SPEC §15 names, and a call is allowed only to a macro, a loop
  helper or a few read-only `dict`/`str` methods. `str.format`, `ljust`, `zfill`, `join` and the rest are
  refused, whichever way they are reached (directly, through a variable, through a filter).
- **Memory.** Every operation that can make a bigger value than its inputs (`*`, `**`, `+`, `~`, `%`,
  `replace`, `join`, `tojson`, the allowed methods) checks the size of its result before making it
  (`MAX_VALUE_CHARS`), and charges it to the render's allocation budget (`MAX_ALLOC_CHARS`); an integer
  may not grow past `MAX_INT_BITS`. Constant folding is off, so none of this runs at compile time.
- **CPU.** An operation counter: while a template renders, a trace hook on the template's own compiled
  code counts the lines it executes and stops the render past `MAX_STEPS` lines or the deadline. A render
  in a thread with a deadline was rejected: a Python thread cannot be stopped, so the runaway render would
  go on holding the GIL; a subprocess per render would cost more than the render. Jinja's own range limit
  does not apply: there is no `range`, and loops over data or nested loops need the counter anyway.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final

from jinja2 import StrictUndefined, Undefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.filters import do_default, do_round, do_truncate
from jinja2.runtime import Context, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment

from watcher import strictjson
from watcher.delivery.formats.base import RenderError

MAX_VALUE_CHARS: Final = 256 * 1024  # no single value may be longer than the whole output may be
MAX_ALLOC_CHARS: Final = 8 * MAX_VALUE_CHARS  # what one render may make, all its values together
MAX_INT_BITS: Final = 4096
MAX_STEPS: Final = 200_000  # template lines executed per render
DEADLINE_S: Final = 1.0
TEMPLATE_FILENAME: Final = "<template>"  # Jinja compiles `from_string` templates under this name
_CHECK_CLOCK_EVERY: Final = 256
_MAX_DATETIME_FORMAT: Final = 200

# The only methods a template may call, per receiver type: read-only and never bigger than the receiver.
SAFE_METHODS: Final[dict[type, frozenset[str]]] = {
    dict: frozenset({"items", "keys", "values", "get"}),
    str: frozenset(
        {
            "startswith",
            "endswith",
            "strip",
            "lstrip",
            "rstrip",
            "lower",
            "upper",
            "title",
            "capitalize",
            "casefold",
            "split",
            "rsplit",
            "splitlines",
            "count",
            "find",
            "rfind",
            "isdigit",
            "isalpha",
            "isalnum",
            "isspace",
            "islower",
            "isupper",
            "removeprefix",
            "removesuffix",
            "partition",
            "rpartition",
        }
    ),
    list: frozenset({"count", "index"}),
    tuple: frozenset({"count", "index"}),
}


class TemplateLimit(RenderError):
    """A render went past one of the sandbox's bounds (steps, deadline, size, integer size)."""


@dataclass(slots=True)
class Budget:
    """What one render may still spend; installed for the render's duration by `bounded`."""

    deadline: float
    clock: Callable[[], float]
    max_steps: int = MAX_STEPS
    max_alloc: int = MAX_ALLOC_CHARS
    steps: int = 0
    allocated: int = 0

    def charge(self, size: int) -> None:
        """Count `size` more characters made by the template; stop the render past the budget."""
        self.allocated += size
        if self.allocated > self.max_alloc:
            raise TemplateLimit(f"template made more than {self.max_alloc} characters of values")


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("template_budget", default=None)


def _make(size: int) -> None:
    """Refuse a value of `size` characters before it is made, and charge it to the render's budget."""
    if size > MAX_VALUE_CHARS:
        raise TemplateLimit(f"a value of {size} characters is longer than {MAX_VALUE_CHARS}")
    budget = _BUDGET.get()
    if budget is not None:
        budget.charge(size)


def _size(value: Any) -> int:
    if isinstance(value, str | list | tuple | dict):
        return len(value)
    return 0


@contextmanager
def bounded(budget: Budget) -> Iterator[Budget]:
    """Run the block with `budget` charged for sizes and a line counter on the template's code."""

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            budget.steps += 1
            if budget.steps > budget.max_steps:
                raise TemplateLimit(f"template ran more than {budget.max_steps} steps")
            if budget.steps % _CHECK_CLOCK_EVERY == 0 and budget.clock() > budget.deadline:
                raise TemplateLimit("template took longer than its time bound")
        return local

    def global_trace(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == TEMPLATE_FILENAME else None

    token = _BUDGET.set(budget)
    previous = sys.gettrace()
    sys.settrace(global_trace)
    try:
        yield budget
    finally:
        sys.settrace(previous)
        _BUDGET.reset(token)


# -- filters ----------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return str(value)  # str() of a StrictUndefined raises the UndefinedError that names it


def f_tojson(value: Any, indent: int | None = None) -> str:
    """Strict JSON (RFC 8259) of `value`, keys sorted: NaN and Infinity become null."""
    if isinstance(value, Undefined):
        _text(value)
    if indent is not None and (not isinstance(indent, int) or not 0 <= indent <= 8):
        raise TemplateLimit("tojson: indent must be 0 to 8")
    text = json.dumps(
        strictjson.sanitize(value), sort_keys=True, ensure_ascii=False, allow_nan=False, indent=indent
    )
    _make(len(text))
    return text


def f_lower(value: Any) -> str:
    """`value` as lower-case text."""
    text = _text(value)
    _make(len(text))
    return text.lower()


def f_upper(value: Any) -> str:
    """`value` as upper-case text."""
    text = _text(value)
    _make(len(text))
    return text.upper()


def f_replace(value: Any, old: Any, new: Any, count: int | None = None) -> str:
    """`value` with `old` replaced by `new` (the first `count` times), refused if the result is too long."""
    text, old, new = _text(value), _text(old), _text(new)
    found = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        found = min(found, count)
    _make(len(text) + found * (len(new) - len(old)))
    return text.replace(old, new, -1 if count is None else count)


def f_join(value: Any, d: Any = "") -> str:
    """The items of `value` as text joined by `d`, refused once the result would be too long."""
    sep = _text(d)
    parts: list[str] = []
    size = 0
    for item in value:
        part = _text(item)
        size += len(part) + (len(sep) if parts else 0)
        if size > MAX_VALUE_CHARS:
            _make(size)
        parts.append(part)
    _make(size)
    return sep.join(parts)


def f_truncate(value: Any, length: int = 255, killwords: bool = False, end: str = "...") -> str:
    """Jinja's `truncate`: `value` cut to `length` characters at a word boundary, ending in `end`."""
    text = _text(value)
    _make(len(text) + len(_text(end)))
    return do_truncate(ENVIRONMENT, text, length, killwords, end, 0)


def f_round(value: Any, precision: int = 0, method: str = "common") -> float:
    """Jinja's `round`; the precision is held to ±30."""
    if not isinstance(precision, int) or abs(precision) > 30:
        raise TemplateLimit("round: precision must be an integer from -30 to 30")
    return do_round(value, precision, method)  # type: ignore[arg-type]


def f_datetime(value: Any, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> str:
    """An ISO 8601 time (or epoch seconds) formatted with strftime `fmt`, in UTC.

    A time without an offset is taken as UTC. `{{ timestamp | datetime('%d %b %Y %H:%M') }}`.
    """
    fmt = _text(fmt)
    if len(fmt) > _MAX_DATETIME_FORMAT:
        raise TemplateLimit(f"datetime: a format longer than {_MAX_DATETIME_FORMAT} characters")
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            when = dt.datetime.fromtimestamp(value, dt.UTC)
        else:
            when = dt.datetime.fromisoformat(_text(value))
            when = when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
        return when.strftime(fmt)
    except (ValueError, OverflowError, OSError) as exc:
        raise RenderError(f"datetime: {str(value)[:60]!r} is not an ISO time ({exc})") from None


FILTERS: Final[dict[str, Callable[..., Any]]] = {
    "tojson": f_tojson,
    "default": do_default,
    "lower": f_lower,
    "upper": f_upper,
    "truncate": f_truncate,
    "replace": f_replace,
    "join": f_join,
    "round": f_round,
    "datetime": f_datetime,
}


# -- operators --------------------------------------------------------------------------------------------


def _int_bits(value: Any) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "%" and isinstance(left, str):
        raise SecurityError("string formatting with % is not allowed in templates")
    if operator == "+":
        if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            _make(len(left) + len(right))
        elif max(_int_bits(left), _int_bits(right)) >= MAX_INT_BITS:
            raise TemplateLimit(f"integers are limited to {MAX_INT_BITS} bits")
    elif operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(times, int):
                _make(len(seq) * max(times, 0))
                return
        if _int_bits(left) + _int_bits(right) > MAX_INT_BITS:
            raise TemplateLimit(f"integers are limited to {MAX_INT_BITS} bits")
    elif (
        operator == "**"
        and isinstance(left, int)
        and isinstance(right, int)
        and right > 0
        and _int_bits(left) * right > MAX_INT_BITS
    ):
        raise TemplateLimit(f"integers are limited to {MAX_INT_BITS} bits")


class BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator with `~` going through the environment's size-checked join."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class JsonTemplateEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox described in the module docstring; one instance serves every template."""

    code_generator_class = BoundedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(autoescape=False, undefined=StrictUndefined, optimized=False, cache_size=0)
        self.globals.clear()
        self.filters = dict(FILTERS)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """The operator, once its result is known to be within bounds."""
        _check_binop(operator, left, right)
        try:
            return super().call_binop(context, operator, left, right)
        except OverflowError:
            raise TemplateLimit(f"{operator}: the number is too large") from None

    def getattr(self, obj: Any, attribute: str) -> Any:
        """An attribute, as the sandbox allows; of an undefined name, the error that names it."""
        if isinstance(obj, Undefined):
            _text(obj)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        """An item, as the sandbox allows; of an undefined name, the error that names it."""
        if isinstance(obj, Undefined):
            _text(obj)
        return super().getitem(obj, argument)

    def bounded_concat(self, parts: tuple[Any, ...]) -> str:
        """The `~` operator: the parts as text, joined, refused if the result is too long."""
        texts = [_text(p) for p in parts]
        _make(sum(map(len, texts)))
        return "".join(texts)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Call a macro, a loop helper or an allowed read-only method; refuse everything else."""
        if isinstance(obj, Undefined):
            _text(obj)  # raises the error that says what is undefined or unsafe, e.g. `dict.update`
        receiver = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        if isinstance(obj, Macro) or isinstance(receiver, LoopContext):
            return super().call(context, obj, *args, **kwargs)
        allowed = SAFE_METHODS.get(type(receiver), frozenset())
        if receiver is None or name not in allowed or getattr(receiver, name, None) != obj:
            raise SecurityError(f"calling {name or type(obj).__name__!r} is not allowed in templates")
        if _size(receiver) > MAX_VALUE_CHARS:
            raise TemplateLimit(f"{name}: called on a value longer than {MAX_VALUE_CHARS} characters")
        result = super().call(context, obj, *args, **kwargs)
        _make(_size(result) + (sum(map(_size, result)) if isinstance(result, list | tuple) else 0))
        return result


ENVIRONMENT: Final = JsonTemplateEnvironment()


def new_budget(
    clock: Callable[[], float] = time.monotonic, deadline_s: float = DEADLINE_S, max_steps: int = MAX_STEPS
) -> Budget:
    """A fresh budget for one render, its deadline `deadline_s` from now on `clock`."""
    return Budget(deadline=clock() + deadline_s, clock=clock, max_steps=max_steps)


__all__ = [
    "DEADLINE_S",
    "ENVIRONMENT",
    "FILTERS",
    "MAX_ALLOC_CHARS",
    "MAX_STEPS",
    "MAX_VALUE_CHARS",
    "SAFE_METHODS",
    "Budget",
    "TemplateLimit",
    "bounded",
    "new_budget",
]
