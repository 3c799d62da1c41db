"""Strict JSON (RFC 8259) in and out: what the daemon reads from the upstream and what it writes anywhere.

Python's `json` module is lenient both ways: it reads and writes `NaN` and `Infinity`, lets lone surrogates
(`"\\ud800"`) into strings that then cannot be encoded as UTF-8, refuses integers of more than 4,300 digits,
and recurses once per nesting level. Each of those, arriving in one job's body, used to crash a loop and,
being stored, crash it again after every restart. SPEC §16 says what to do instead, and this module does it:

- `parse_body` reads an upstream body: a nesting deeper than `MAX_DEPTH` is refused before any parser
  recurses; `NaN`, `Infinity` and floats out of range (`1e400`) become `None`; an integer too long for
  `int()` is kept as its digit string; lone surrogates become U+FFFD. Everything else is kept as received.
- `dumps` writes strict JSON whatever it is given, sanitising the same way if it must: the second line of
  defence for the stores and the webhook bodies.

Both keep the common case (a small, clean body) on the C fast path: the sanitising walk runs only when a
cheap scan of the text says it may be needed.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from typing import Any, Final

MAX_DEPTH: Final = 64
# A lone surrogate is a code point no UTF-8 text can hold; it reaches a Python string from a `\udXXX` escape
# or from bytes decoded with `surrogatepass`, as `json.loads` decodes them.
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")
# A JSON string, unrolled so that the regex engine does not try alternatives per character.
_STRING: Final = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_STEP: Final = tuple(1 if b in b"[{" else -1 for b in range(256))
# An int whose decimal form `str()` refuses (the limit is in digits, about 3.32 bits each) can only be
# written as a string.
_MAX_INT_BITS: Final = 14_000


class TooDeep(ValueError):
    """The JSON text nests arrays and objects deeper than allowed."""


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text, brackets inside strings ignored.

    Linear and without recursion, so a body of a million `[` costs a scan, not a stack.
    """
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    return max(0, max(itertools.accumulate(map(_STEP.__getitem__, brackets))))


def _finite_float(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None  # "1e400" parses as inf


def _int_or_digits(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:  # more digits than `sys.get_int_max_str_digits()` allows
        return text


def _constant(_name: str) -> None:
    return None  # NaN, Infinity, -Infinity: not JSON, and no receiver can parse them


# Built once: `json.loads` with hooks would build a decoder per call. Both keep the C scanner; the hooks
# run only for the tokens they are about (floats, NaN/Infinity, and in the second one integers).
_DECODER: Final = json.JSONDecoder(parse_constant=_constant, parse_float=_finite_float)
_DIGITS_DECODER: Final = json.JSONDecoder(
    parse_constant=_constant, parse_float=_finite_float, parse_int=_int_or_digits
)


def parse_body(raw: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of `raw`, made fit for strict JSON as SPEC §16 says; ValueError if it is not JSON.

    `TooDeep` (a ValueError) when arrays and objects nest deeper than `max_depth`. Encodings are detected
    as `json.loads` does (UTF-8, with or without BOM, or UTF-16/32).
    """
    # A job body starts with `{"`: UTF-8 without looking further (a UTF-16 one would have a NUL second).
    encoding = "utf-8" if raw.startswith(b'{"') else json.detect_encoding(raw)
    text = raw.decode(encoding, "surrogatepass")
    # Fewer brackets than the limit cannot nest deeper than it; most bodies have one `{` and no `[`, which
    # two memchr scans tell. The exact scan is for odd bodies only.
    if ("[" in text or text.find("{", 1) != -1) and text.count("[") + text.count("{") > max_depth:
        depth = nesting_depth(raw)
        if depth > max_depth:
            raise TooDeep(f"nested {depth} levels deep, more than {max_depth}")
    try:
        value = _decode(_DECODER, text)
    except json.JSONDecodeError:
        raise
    except ValueError:
        # Not a syntax error: an integer too long for int(); read again keeping such integers as text.
        value = _decode(_DIGITS_DECODER, text)
    if ("\\" in text and _SURROGATE_ESCAPE.search(text)) or (not text.isascii() and _SURROGATE.search(text)):
        value = sanitize(value)
    return value


def _decode(decoder: json.JSONDecoder, text: str) -> Any:
    # `raw_decode` skips the whitespace regex that `decode` runs at both ends; a text with whitespace
    # around its value (or junk after it) goes through `decode`, which allows the one and rejects the other.
    try:
        value, end = decoder.raw_decode(text)
    except json.JSONDecodeError:
        return decoder.decode(text)
    return value if end == len(text) else decoder.decode(text)


def _clean_str(text: str) -> str:
    if text.isascii() or not _SURROGATE.search(text):
        return text
    # Through UTF-16 code units: a high surrogate followed by a low one becomes the character they encode,
    # every other surrogate becomes U+FFFD.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _clean_int(value: int) -> int | str | None:
    if value.bit_length() < _MAX_INT_BITS:
        return value
    try:
        str(value)
    except ValueError:
        return None  # only code can build such an int (`parse_body` keeps long ones as text)
    return value


def sanitize(value: Any) -> Any:
    """A copy of `value` that strict JSON can carry: non-finite floats become None, lone surrogates in
    strings and keys become U+FFFD, ints too long to print become None.

    Iterative (an explicit stack), so depth costs memory, never recursion. Containers are copied;
    anything that is not JSON (other objects) is left for the encoder to reject.
    """
    holder: list[Any] = [value]
    stack: list[tuple[Any, Any]] = [(holder, 0)]
    while stack:
        parent, key = stack.pop()
        item = parent[key]
        if isinstance(item, str):
            parent[key] = _clean_str(item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                parent[key] = None
        elif isinstance(item, int):
            parent[key] = _clean_int(item)
        elif isinstance(item, dict):
            copy = {(_clean_str(k) if isinstance(k, str) else k): v for k, v in item.items()}
            parent[key] = copy
            stack.extend((copy, k) for k in copy)
        elif isinstance(item, list | tuple):
            items = list(item)
            parent[key] = items
            stack.extend((items, i) for i in range(len(items)))
    return holder[0]


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_SORTED_ENCODER: Final = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True
)


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Compact strict JSON text of `value` (non-ASCII kept as is), sanitised first if it has to be.

    Never emits `NaN`, `Infinity` or a lone surrogate, so the text always encodes as UTF-8 and any strict
    parser (PostgreSQL's `json`, a receiver's) accepts it. TypeError for values that are not JSON at all.
    """
    encoder = _SORTED_ENCODER if sort_keys else _ENCODER
    try:
        text = encoder.encode(value)
    except ValueError:  # a non-finite float, or an int too long to print
        return encoder.encode(sanitize(value))
    if not text.isascii() and _SURROGATE.search(text):
        return encoder.encode(sanitize(value))
    return text


__all__ = ["MAX_DEPTH", "TooDeep", "dumps", "nesting_depth", "parse_body", "sanitize"]
