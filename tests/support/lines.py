"""Reading a file another process is still appending to, line by line."""

from __future__ import annotations

from pathlib import Path


def whole_lines(path: Path) -> list[str]:
    """The non-empty lines of `path` that end in a newline: a line still being written is left for the
    next read (a JSON line read half-way does not parse)."""
    text = path.read_text(errors="replace")
    return [ln for ln in text[: text.rfind("\n") + 1].splitlines() if ln.strip()]
