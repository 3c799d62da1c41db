"""What `watcher bench` measured: figures and targets, the table a user reads and the JSON a tool keeps.

A figure either carries a target (then it passes or fails) or is informational (the baseline it is compared
with, a size, a machine detail). Values are plain floats so the JSON stays easy to diff between runs.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sqlite3
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from watcher import __version__


@dataclass(slots=True)
class Figure:
    """One measured value; `passed` is None for a figure without a target."""

    name: str
    value: float | None
    unit: str = ""
    target: str = ""
    passed: bool | None = None


@dataclass(slots=True)
class ScenarioResult:
    """Everything one scenario measured, and what it wants the reader to know about how."""

    scenario: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None  # the one-line reason a scenario could not finish
    skipped: str | None = None  # the one-line reason a scenario did not run (e.g. it needs PostgreSQL)

    def add(self, name: str, value: float | None, unit: str = "", **target: Any) -> Figure:
        """Record an informational figure, or one checked against a target (`at_least=`/`at_most=`)."""
        fig = Figure(name, value, unit)
        at_least, at_most = target.get("at_least"), target.get("at_most")
        if at_least is not None:
            fig.target = f">= {_fmt(at_least)}{_unit(unit)}"
            fig.passed = value is not None and value >= at_least
        elif at_most is not None:
            fig.target = f"< {_fmt(at_most)}{_unit(unit)}"
            fig.passed = value is not None and value < at_most
        self.figures.append(fig)
        return fig

    @property
    def passed(self) -> bool:
        """True if the scenario finished and every target it checks held."""
        return self.error is None and all(f.passed is not False for f in self.figures)


def _unit(unit: str) -> str:
    return f" {unit}" if unit else ""


def _fmt(value: float | None) -> str:
    """A value with as many digits as a reader can use: 0.87, 12.3, 4,512, 1,000,000."""
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000 or float(value).is_integer():
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def render_table(results: list[ScenarioResult]) -> str:
    """A plain-text table: scenario, figure, value, target and PASS/FAIL, then each scenario's notes."""
    header = ("scenario", "figure", "value", "target", "result")
    rows: list[tuple[str, ...]] = []
    for res in results:
        if res.error is not None:
            rows.append((res.scenario, "(did not finish)", "-", "", "ERROR"))
        if res.skipped is not None:
            rows.append((res.scenario, "(skipped)", "-", "", "SKIP"))
        for fig in res.figures:
            verdict = "" if fig.passed is None else ("PASS" if fig.passed else "FAIL")
            rows.append((res.scenario, fig.name, f"{_fmt(fig.value)}{_unit(fig.unit)}", fig.target, verdict))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    rule = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(), rule, *lines]
    for res in results:
        for note in res.notes:
            out.append(f"{res.scenario}: {note}")
        if res.error is not None:
            out.append(f"{res.scenario}: error: {res.error}")
        if res.skipped is not None:
            out.append(f"{res.scenario}: skipped: {res.skipped}")
    return "\n".join(out) + "\n"


def machine() -> dict[str, Any]:
    """Where the figures came from: CPU, cores, memory, OS and the versions that matter."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    with contextlib.suppress(OSError, ValueError):
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
        "sqlite": sqlite3.sqlite_version,
        "job_watcher": __version__,
    }


def to_json(
    results: list[ScenarioResult],
    *,
    command: str,
    started_at: str,
    seconds: float,
    store: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole run as one JSON document (`--json FILE`); `store` says what the daemons stored in."""
    return {
        "command": command,
        "started_at": started_at,
        "seconds": round(seconds, 1),
        "machine": machine(),
        "store": store or {"kind": "sqlite"},
        "passed": all(r.passed for r in results),
        "scenarios": [asdict(r) for r in results],
    }
