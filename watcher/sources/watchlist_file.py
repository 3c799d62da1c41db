"""Reading the watch-list file (SPEC §5): one line parser, for a small text and for a streamed large file.

`parse_watchlist` parses a text in memory (small callers, tests). `scan` streams a file line by line in a
worker thread and keeps one int per entry, `uuid << 48 | line << 16 | workspace index`, in sorted runs:
about 60 bytes an entry instead of the text, its lines and a `Registration` each. `Scan.entries` merges
the runs in id order, dropping repeated ids (the first line wins) and reporting them as problems, so the
reloader can diff the store range by range. A line longer than `MAX_LINE` characters is a problem, read
past without being held, so no line of a hostile file is kept whole.
"""

from __future__ import annotations

import heapq
import io
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from watcher.ids import is_uuid
from watcher.models import Registration, Source

# (st_mtime_ns, st_size, st_ino): an edit, a truncation or an atomic rename changes at least one of them.
Signature = tuple[int, int, int]

MAX_LINE = 4096  # characters; a UUID and a workspace name take well under a hundred
MAX_PROBLEMS = 1000  # problems kept (and logged) one by one; the rest are only counted
RUN = 50_000  # entries sorted at a time: a sort holds the GIL, so each is kept short
_LINE_BITS, _WS_BITS = 32, 16
_LINE_MAX, _WS_MASK = (1 << _LINE_BITS) - 1, (1 << _WS_BITS) - 1


@dataclass(frozen=True)
class WatchlistProblem:
    """A line of the watch-list that was skipped, and why."""

    line: int  # 1-based, as an editor shows it
    message: str


def _lines(
    f: TextIO, default_workspace: str, workspaces: Collection[str]
) -> Iterator[tuple[int, str, str | None]]:
    """(line number, job id, workspace) of each entry, or (line number, problem, None); blank lines skipped.

    Split on "\\n" only (the file is opened with `newline="\\n"`), so that numbers match what editors and
    `sed -n Np` show. Never raises on the text.
    """
    number = 0
    while raw := f.readline(MAX_LINE):
        number += 1
        if len(raw) == MAX_LINE and not raw.endswith("\n"):
            while (more := f.readline(MAX_LINE)) and not more.endswith("\n"):
                pass
            if "#" not in raw:  # with a comment begun, the rest is comment and the head is whole
                yield number, f"line longer than {MAX_LINE} characters", None
                continue
        tokens = raw.split("#", 1)[0].split()
        if not tokens:
            continue
        if len(tokens) > 2:
            yield number, f"expected '<job id> [workspace]', got {len(tokens)} words", None
        elif not is_uuid(tokens[0]):
            yield number, f"not a job id (UUID): {tokens[0][:64]!r}", None
        elif (workspace := tokens[1] if len(tokens) == 2 else default_workspace) not in workspaces:
            yield number, f"unknown workspace {workspace[:64]!r}", None
        else:
            yield number, tokens[0].lower(), workspace


def parse_watchlist(
    text: str, default_workspace: str, workspaces: Collection[str]
) -> tuple[list[Registration], list[WatchlistProblem]]:
    """Parse a watch-list into FILE registrations (in file order) and the problems of the lines skipped.

    A line is `<job id> [workspace]`; the id must be a hyphenated UUID and comes back lower-case. A
    duplicate id keeps its first line. Never raises, whatever the text.
    """
    regs: list[Registration] = []
    problems: list[WatchlistProblem] = []
    first_line: dict[str, int] = {}
    for number, item, workspace in _lines(io.StringIO(text, newline="\n"), default_workspace, workspaces):
        if workspace is None:
            problems.append(WatchlistProblem(number, item))
        elif item in first_line:
            problems.append(WatchlistProblem(number, f"duplicate of line {first_line[item]}, ignored"))
        else:
            first_line[item] = number
            regs.append(Registration(job_id=item, workspace=workspace, source=Source.FILE))
    return regs, problems


def job_id(key: int) -> str:
    """The canonical job id of an entry key."""
    h = f"{key >> (_LINE_BITS + _WS_BITS):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class Scan:
    """One look at the file: its signature and, unless unchanged or changing while read, its entries."""

    signature: Signature
    runs: list[list[int]] | None = None  # sorted runs of entry keys; None: not read
    workspaces: tuple[str, ...] = ()  # a key's low bits index this
    problems: list[WatchlistProblem] = field(default_factory=list)  # the first MAX_PROBLEMS, by line
    problem_count: int = 0  # all of them, duplicates included once `entries` has run
    changing: bool = False

    def problem(self, line: int, message: str) -> None:
        """Count a problem; keep it while fewer than MAX_PROBLEMS are kept."""
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(WatchlistProblem(line, message))

    def entries(self) -> Iterator[Registration]:
        """The entries in id order, each id once (its first line); repeats are recorded as problems.

        Holds the GIL only briefly at a time: run it in a worker thread, chunk by chunk.
        """
        last, first = -1, 0
        for key in heapq.merge(*(self.runs or ())):
            uid, line = key >> (_LINE_BITS + _WS_BITS), (key >> _WS_BITS) & _LINE_MAX
            if uid == last:
                self.problem(line, f"duplicate of line {first}, ignored")
                continue
            last, first = uid, line
            yield Registration(job_id(key), self.workspaces[key & _WS_MASK], Source.FILE)


def _signature(st: os.stat_result) -> Signature:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def scan(path: Path, known: Signature | None, default_workspace: str, workspaces: Sequence[str]) -> Scan:
    """Stat the file and read it unless its signature is `known` (blocking: run in a thread).

    `utf-8-sig` drops the BOM some editors write. Raises OSError or UnicodeDecodeError if unreadable.
    """
    before = _signature(path.stat())
    if before == known:
        return Scan(before)
    names = tuple(sorted(workspaces))
    index = {w: i for i, w in enumerate(names)}
    out, runs, run = Scan(before, None, names), list[list[int]](), list[int]()
    with path.open(encoding="utf-8-sig", newline="\n") as f:
        for number, item, workspace in _lines(f, default_workspace, index):
            if workspace is None:
                out.problem(number, item)
                continue
            if number > _LINE_MAX:
                out.problem(number, f"beyond line {_LINE_MAX}, ignored")
                break
            run.append(
                int(item.replace("-", ""), 16) << (_LINE_BITS + _WS_BITS)
                | number << _WS_BITS
                | index[workspace]
            )
            if len(run) == RUN:
                run.sort()
                runs.append(run)
                run = []
    run.sort()
    runs.append(run)
    after = _signature(path.stat())
    if after != before:
        # A writer that does not rename atomically may be half-way through: read it once it settles.
        return Scan(after, changing=True)
    out.signature, out.runs = after, runs
    return out
