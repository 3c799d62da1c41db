"""Bodies of the simulator's 200-answer faults: garbage (not a valid job) and poison (a valid job that lenient
JSON code chokes on), so that users can reproduce each with `watcher simulate`.

Garbage must be an `invalid_response` to the daemon. Poison is what SPEC §16 names: a daemon must survive
each one, keep the job's body (sanitised: NaN/Infinity as null, lone surrogates as U+FFFD, over-long
integers as digit strings) or, for nesting deeper than 64 levels, count an `invalid_response`. The
`grown_status` variant answers a status the upstream does not document (`cancelled`): a transition, not an
error (SPEC §2).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

GARBAGE_VARIANTS: Final = (
    "not_json",
    "not_object",
    "missing_field",
    "bad_status",
    "wrong_id",
    "truncated",
)
POISON_VARIANTS: Final = (
    "lone_surrogate",
    "deep_nesting",
    "nan",
    "huge_int",
    "grown_status",
)
DEEP_LEVELS: Final = 100_000
HUGE_INT_DIGITS: Final = 5_000
GROWN_STATUS: Final = "cancelled"


def garbage_body(view: dict[str, Any], variant: str, new_id: Callable[[], str]) -> tuple[str, str]:
    """(text, content type) of a 200 answer that is not a valid job; `view` is the job's real body."""
    if variant == "not_json":
        return "<html><body>Bad Gateway</body></html>", "text/html"
    text = json.dumps(view)
    if variant == "not_object":
        text = json.dumps([view])
    elif variant == "missing_field":
        text = json.dumps({k: v for k, v in view.items() if k != "status"})
    elif variant == "bad_status":
        text = json.dumps({**view, "status": 7})  # a status that is not a string is no status at all
    elif variant == "wrong_id":
        text = json.dumps({**view, "id": new_id()})
    else:  # truncated: the connection was fine, the JSON was cut short
        text = text[: len(text) // 2]
    return text, "application/json"


def _with_raw_fields(view: dict[str, Any], raw_fields: str) -> bytes:
    # JSON text that `json.dumps` will not write (NaN, a 5,000-digit integer): spliced in as raw text.
    text = json.dumps(view)
    return (text[:-1] + ", " + raw_fields + "}").encode()


def poison_body(view: dict[str, Any], variant: str) -> bytes:
    """The bytes of a 200 answer with the job `view` made poisonous in the way `variant` names."""
    if variant == "lone_surrogate":
        # A high surrogate with no low one, in a value and in a key: valid JSON syntax, but no UTF-8 text can
        # hold it. `json.dumps` (ensure_ascii) writes it as the escape \ud800.
        return json.dumps(
            {**view, "error": "\ud800 oops", "note\udc00": "lone low surrogate in the key"}
        ).encode()
    if variant == "deep_nesting":
        return _with_raw_fields(view, '"detail": ' + "[" * DEEP_LEVELS + "]" * DEEP_LEVELS)
    if variant == "nan":
        # 1e400 is a valid JSON number that Python reads as inf.
        return _with_raw_fields(view, '"progress": NaN, "eta_s": Infinity, "floor": -Infinity, "big": 1e400')
    if variant == "huge_int":
        return _with_raw_fields(view, '"count": ' + "9" * HUGE_INT_DIGITS)
    if variant == "grown_status":
        return json.dumps({**view, "status": GROWN_STATUS}).encode()
    raise ValueError(f"variant: expected one of {', '.join(POISON_VARIANTS)}")


__all__ = ["GARBAGE_VARIANTS", "POISON_VARIANTS", "garbage_body", "poison_body"]
