"""Tests of the watch-list parser: one id per line, optional workspace, comments, bad lines reported."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.models import Source
from watcher.sources.watchlist import WatchlistProblem, parse_watchlist
from watcher.sources.watchlist_file import MAX_LINE

WORKSPACES = ("acme", "beta")
A = "5135bfe3-b2c7-41f3-a44f-f4b58e7384df"
B = "b9eb98d0-2445-46a3-8107-4fcf243f85e4"
CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def parse(text: str) -> tuple[list[tuple[str, str]], list[tuple[int, str]]]:
    """Parse with the test workspaces; (id, workspace) pairs and (line, message) problems."""
    regs, problems = parse_watchlist(text, "acme", WORKSPACES)
    assert all(r.source is Source.FILE for r in regs)
    return [(r.job_id, r.workspace) for r in regs], [(p.line, p.message) for p in problems]


@pytest.mark.parametrize(
    ("text", "entries", "problem_lines"),
    [
        ("", [], []),
        ("\n\n   \n", [], []),
        (A, [(A, "acme")], []),
        (f"{A}\n{B} beta\n", [(A, "acme"), (B, "beta")], []),
        (f"# jobs of the nightly batch\n{A}  # the big one\n", [(A, "acme")], []),
        (f"  {A.upper()}\tbeta  \r\n", [(A, "beta")], []),
        (f"{A}#comment right after", [(A, "acme")], []),
        (f"{A} gamma\n{B}", [(B, "acme")], [1]),
        (f"{A} beta extra\n", [], [1]),
        ("not-a-uuid\n12345\n", [], [1, 2]),
        (f"{{{A}}}\n{A.replace('-', '')}\nurn:uuid:{A}\n", [], [1, 2, 3]),
        (f"{A[:-1]}g\n", [], [1]),
        (f"{A}\n{B}\n{A.upper()} beta\n", [(A, "acme"), (B, "acme")], [3]),
        (f"\n\n# header\nbad\n\n{A}\n", [(A, "acme")], [4]),
    ],
)
def test_examples(text: str, entries: list[tuple[str, str]], problem_lines: list[int]) -> None:
    """A table of files and what they parse to; problems carry the 1-based line they were found on."""
    got_entries, got_problems = parse(text)
    assert got_entries == entries
    assert [line for line, _ in got_problems] == problem_lines


def test_problem_messages_name_the_cause() -> None:
    """Each kind of bad line says what is wrong with it."""
    _, problems = parse(f"nope\n{A} gamma\n{A} a b\n{B}\n{B}\n")
    messages = dict(problems)
    assert "UUID" in messages[1]
    assert "gamma" in messages[2]
    assert "3 words" in messages[3]
    assert "duplicate of line 4" in messages[5]


def test_problem_is_a_value() -> None:
    """Problems compare by value, so callers and tests can match them."""
    assert WatchlistProblem(3, "x") == WatchlistProblem(3, "x")


@st.composite
def valid_lines(draw: st.DrawFn) -> tuple[str, str, str]:
    """A valid line in any of its spellings: (line, canonical id, workspace)."""
    job_id = str(draw(st.uuids()))
    spelled = job_id.upper() if draw(st.booleans()) else job_id
    workspace = draw(st.sampled_from((None, *WORKSPACES)))
    space = st.sampled_from([" ", "\t", "  ", " \t "])
    line = draw(st.sampled_from(["", " ", "\t"])) + spelled
    if workspace is not None:
        line += draw(space) + workspace
    if draw(st.booleans()):
        line += draw(space) + "#" + draw(st.text().map(lambda s: s.replace("\n", " ")))
    return line, job_id, workspace or "acme"


garbage = st.text().map(lambda s: s.replace("\n", " "))


@given(st.lists(st.one_of(valid_lines(), garbage), max_size=30))
def test_every_valid_line_comes_back(lines: list[tuple[str, str, str] | str]) -> None:
    """Mixed with arbitrary garbage, each valid line yields its registration and no problem."""
    texts = [item if isinstance(item, str) else item[0] for item in lines]
    entries, problems = parse("\n".join(texts))
    problem_lines = {line for line, _ in problems}
    seen: set[str] = set()
    for number, item in enumerate(lines, start=1):
        if isinstance(item, str):
            continue
        _, job_id, workspace = item
        earlier = "\n".join(texts[: number - 1]).lower()
        if job_id in earlier or job_id in seen:
            continue  # a duplicate (or an id that garbage happened to spell): the first line wins
        seen.add(job_id)
        assert (job_id, workspace) in entries
        assert number not in problem_lines


@given(st.text())
def test_never_raises_on_arbitrary_text(text: str) -> None:
    """Any text parses to canonical ids in known workspaces and problems on real line numbers."""
    regs, problems = parse_watchlist(text, "acme", WORKSPACES)
    line_count = len(text.split("\n"))
    assert all(CANONICAL.fullmatch(r.job_id) for r in regs)
    assert all(r.workspace in WORKSPACES for r in regs)
    assert len({r.job_id for r in regs}) == len(regs)
    assert all(1 <= p.line <= line_count for p in problems)


def test_ids_are_canonical_uuids() -> None:
    """Returned ids round-trip through uuid.UUID unchanged."""
    entries, _ = parse(f"{A.upper()}\n{B}\n")
    assert [str(uuid.UUID(job_id)) for job_id, _ in entries] == [A, B]


def test_an_overlong_line_is_a_problem_and_the_numbering_goes_on() -> None:
    """A line longer than MAX_LINE is reported (and never held whole), unless a comment begins early in it
    (the rest is comment); the next lines keep their numbers."""
    entries, problems = parse(f"{'x' * (3 * MAX_LINE + 5)}\n{A}\n# {'y' * MAX_LINE}\n{B} # {'z' * MAX_LINE}")
    assert entries == [(A, "acme"), (B, "acme")]
    assert [line for line, _ in problems] == [1]
    assert "longer than" in problems[0][1]
