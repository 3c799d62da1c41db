"""Tests of watcher.strictjson: upstream bodies read as SPEC §16 says, JSON written strictly."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.standard_webhooks import NotStrictJSON, strict_json
from watcher.strictjson import MAX_DEPTH, TooDeep, dumps, nesting_depth, parse_body, sanitize


def nested(depth: int) -> bytes:
    """A JSON object whose `detail` field holds `depth - 1` nested arrays: `depth` levels in all."""
    return b'{"detail": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


class TestParseBody:
    """What the upstream sends becomes a value strict JSON can carry, or a ValueError."""

    def test_a_clean_body_is_kept_as_received(self) -> None:
        """Key order, unicode, nulls and numbers come back exactly as `json.loads` reads them."""
        raw = '{"id": "x", "name": "Zoë 🚀", "error": null, "n": 3, "f": 1.5, "l": [1, {"a": "b"}]}'.encode()
        assert parse_body(raw) == json.loads(raw)
        assert list(parse_body(raw)) == ["id", "name", "error", "n", "f", "l"]

    def test_nan_and_infinities_become_null(self) -> None:
        """NaN, Infinity, -Infinity and numbers beyond a double (1e400 reads as inf) become null."""
        raw = b'{"a": NaN, "b": Infinity, "c": -Infinity, "d": 1e400, "e": -1e400, "f": [NaN], "g": 1e-400}'
        nulls = dict.fromkeys("abcde")
        assert parse_body(raw) == {**nulls, "f": [None], "g": 0.0}

    def test_lone_surrogates_become_replacement_characters_in_values_and_keys(self) -> None:
        """An escaped lone surrogate, in a value or a key, is U+FFFD; an escaped pair is one character."""
        raw = b'{"error": "\\ud800 oops", "k\\udc00": "\\udfff", "pair": "\\ud83d\\ude00", "x\\uD800y": 1}'
        assert parse_body(raw) == {"error": "\ufffd oops", "k\ufffd": "\ufffd", "pair": "😀", "x\ufffdy": 1}

    def test_encoded_surrogates_become_replacement_characters(self) -> None:
        """Surrogates encoded as UTF-8 bytes (which `json.loads` lets through) become U+FFFD too."""
        assert parse_body(b'{"e": "a\xed\xa0\x80b"}') == {"e": "a\ufffdb"}

    def test_an_integer_too_long_for_int_is_kept_as_its_digits(self) -> None:
        """More than 4,300 digits: kept as the digit string; the rest of the body is unchanged."""
        digits = "9" * 5000
        raw = ('{"count": ' + digits + ', "neg": -' + digits + ', "small": 12, "f": NaN}').encode()
        assert parse_body(raw) == {"count": digits, "neg": "-" + digits, "small": 12, "f": None}

    def test_nesting_up_to_the_limit_is_fine_and_deeper_is_refused(self) -> None:
        """64 levels parse; 65 are TooDeep, a ValueError."""
        assert parse_body(nested(MAX_DEPTH))["detail"] is not None
        with pytest.raises(TooDeep):
            parse_body(nested(MAX_DEPTH + 1))
        assert issubclass(TooDeep, ValueError)

    def test_a_hundred_thousand_levels_raise_no_recursion_error(self) -> None:
        """The issue's body (100,000 levels, about 200 KB) is refused without ever recursing."""
        with pytest.raises(TooDeep):
            parse_body(nested(100_000))

    def test_brackets_inside_strings_do_not_count(self) -> None:
        """A string full of brackets (and escaped quotes) is not nesting."""
        raw = b'{"a": "' + b"[" * 500 + b'\\"' + b"{" * 500 + b'"}'
        assert nesting_depth(raw) == 1
        assert parse_body(raw)["a"].startswith("[[[")

    def test_many_shallow_brackets_are_fine(self) -> None:
        """Ten thousand sibling arrays are two levels deep, not ten thousand."""
        raw = b'{"l": [' + b",".join([b"[]"] * 10_000) + b"]}"
        assert nesting_depth(raw) == 3
        assert len(parse_body(raw)["l"]) == 10_000

    @pytest.mark.parametrize(
        "raw", [b"", b"{", b'{"a": 1} x', b"\xff\xfe\xff", b"<html>", b'{"a": 1}{"b": 2}', b"nan"]
    )
    def test_not_json_is_a_value_error(self, raw: bytes) -> None:
        """Anything that is not one JSON value is a ValueError, never anything else."""
        with pytest.raises(ValueError):  # noqa: PT011 - the detail varies with the input
            parse_body(raw)

    def test_whitespace_bom_and_utf16_are_accepted_as_json_loads_does(self) -> None:
        """Surrounding whitespace, a UTF-8 BOM and UTF-16 text are read as `json.loads` reads them."""
        assert parse_body(b' \n{"a": 1}\t ') == {"a": 1}
        assert parse_body(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
        assert parse_body('{"a": "é"}'.encode("utf-16")) == {"a": "é"}


def poisoned_json() -> st.SearchStrategy[Any]:
    """JSON-like values with everything strict JSON cannot carry: NaN, infinities, lone surrogates."""
    surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
    text = st.text(st.characters(codec=None, exclude_categories=()) | surrogates, max_size=8)
    floats = st.floats() | st.sampled_from([math.nan, math.inf, -math.inf])
    leaves = st.none() | st.booleans() | st.integers() | floats | text
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=20,
    )


class TestDumps:
    """Whatever it is given, `dumps` writes text that a strict parser accepts."""

    @settings(max_examples=300, deadline=None)
    @given(poisoned_json(), st.booleans())
    def test_output_is_always_strict(self, value: Any, sort_keys: bool) -> None:
        """Strict JSON (checked by the test receiver's independent parser) that encodes as UTF-8."""
        text = dumps(value, sort_keys=sort_keys)
        strict_json(text.encode("utf-8"))

    @settings(max_examples=200, deadline=None)
    @given(poisoned_json())
    def test_clean_values_are_written_unchanged(self, value: Any) -> None:
        """A value with nothing to sanitise is written as `json.dumps` writes it."""
        clean = sanitize(value)
        assert dumps(clean) == json.dumps(clean, separators=(",", ":"), ensure_ascii=False)

    def test_what_it_replaces(self) -> None:
        """NaN and infinities as null, lone surrogates as U+FFFD, in values and keys."""
        value = {"a": math.nan, "b": [math.inf, -math.inf], "c\ud800": "x\udc00", "d": "😀"}
        assert json.loads(dumps(value)) == {"a": None, "b": [None, None], "c\ufffd": "x\ufffd", "d": "😀"}

    def test_the_strict_parser_of_the_test_receiver_can_fail(self) -> None:
        """The check used above refuses what `json.dumps` writes by default."""
        for text in (json.dumps({"a": math.nan}), json.dumps({"a": "\ud800"}), "[1e400]"):
            with pytest.raises(NotStrictJSON):
                strict_json(text.encode("utf-8", "surrogatepass"))
