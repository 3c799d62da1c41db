"""The simulator's faults: which fraction of requests misbehave, and how (`Faults`), and the bodies of its
200-answer faults: garbage (not a valid job) and poison (a valid job that lenient JSON code chokes on), so
that users can reproduce each with `watcher simulate`.

Garbage must be an `invalid_response` to the daemon. Poison is what SPEC §16 names: a daemon must survive
each one, keep the job's body (sanitised: NaN/Infinity as null, lone surrogates as U+FFFD, over-long
integers as digit strings) or, for nesting deeper than 64 levels, count an `invalid_response`. The
`grown_status` variant answers a status the upstream does not document (`cancelled`): a transition, not an
error (SPEC §2).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
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
FAULT_KINDS: Final = ("server_error", "rate_limit", "garbage", "slow", "drop", "poison")
DEEP_LEVELS: Final = 100_000
HUGE_INT_DIGITS: Final = 5_000
GROWN_STATUS: Final = "cancelled"


@dataclass(slots=True)
class Faults:
    """Fractions of upstream requests that misbehave, and how; every field defaults to 0 (none)."""

    server_error: float = 0.0  # answered 500, 502 or 503
    rate_limit: float = 0.0  # answered 429 with `Retry-After: retry_after_s`
    retry_after_s: float = 0.0
    garbage: float = 0.0  # answered 200 with a body that is not a valid job (see GARBAGE_VARIANTS)
    slow: float = 0.0  # answered only after slow_s (independent of the other faults)
    slow_s: float = 0.0
    drop: float = 0.0  # connection closed without an answer
    poison: float = 0.0  # answered 200 with a valid job that lenient JSON code chokes on (POISON_VARIANTS)
    poison_variant: str = ""  # the poison to serve; "" draws one of POISON_VARIANTS per answer
    workspace: str = ""  # only requests for this workspace draw these faults; "" every workspace

    def __post_init__(self) -> None:
        if self.poison_variant not in ("", *POISON_VARIANTS):
            raise ValueError(f'poison_variant: expected one of {", ".join(POISON_VARIANTS)} or ""')
        if not isinstance(self.workspace, str):
            raise ValueError(f'workspace: expected a workspace slug or "", got {self.workspace!r}')
        for f in fields(self):
            if f.name in ("poison_variant", "workspace"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{f.name}: expected a number, got {value!r}")
            if value < 0 or (not f.name.endswith("_s") and value > 1):
                raise ValueError(f"{f.name}: must be {'>= 0' if f.name.endswith('_s') else 'in [0, 1]'}")
            setattr(self, f.name, float(value))

    @classmethod
    def from_json(cls, data: Any) -> Faults:
        """Build from a control-API body; unknown keys are an error so typos do not go unnoticed."""
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        return cls(**data)


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


__all__ = ["FAULT_KINDS", "GARBAGE_VARIANTS", "POISON_VARIANTS", "Faults", "garbage_body", "poison_body"]
