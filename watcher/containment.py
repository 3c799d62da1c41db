"""Containing one item's failure (SPEC §16, STYLE habit 7): what an unexpected exception becomes.

A loop that handles many items (watches, deliveries) must not die of one item's bug or poison. It catches
the exception, logs it with its traceback, counts it against the item and goes on; an item that fails
`QUARANTINE_AFTER` times is quarantined, so a bug nobody has found yet costs one job, not the daemon.
"""

from __future__ import annotations

from typing import Final

from watcher.errors import StoreError, StoreUnavailable

# Unexpected exceptions in one watch's handling, over its life, before it is quarantined (SPEC §16).
QUARANTINE_AFTER: Final = 3
_MAX_REASON = 300


def is_item_failure(exc: BaseException) -> bool:
    """True for an exception that belongs to the item being handled, not to the store as a whole.

    A `StoreUnavailable` (the store is out) is waited out by the loop; cancellation and the interpreter's
    own exits are never caught; everything else (a `StoreError` for one row, a bug) is the item's.
    """
    return isinstance(exc, Exception) and not isinstance(exc, StoreUnavailable)


def safe_line(text: str, limit: int = _MAX_REASON) -> str:
    """`text` as one bounded line of printable ASCII that any store keeps (escapes, not the raw bytes)."""
    line = text.splitlines()[0] if text else ""
    line = line.encode("ascii", "backslashreplace").decode("ascii")
    line = "".join(c if c.isprintable() else "?" for c in line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """A one-line reason (type and message) that any store can keep: printable ASCII only, bounded.

    The message may carry the very bytes that made the item fail (a lone surrogate, a NUL), so it is
    escaped rather than kept as is.
    """
    try:
        text = str(exc).splitlines()[0] if str(exc) else ""
    except Exception:  # a broken __str__ must not fail the containment of the failure itself
        text = "(message unavailable)"
    return safe_line(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def as_store_error(exc: BaseException) -> StoreError:
    """`exc` as a `StoreError` (itself if it is one), for what reports store health by error."""
    if isinstance(exc, StoreError):
        return exc
    wrapped = StoreError(describe(exc))
    wrapped.__cause__ = exc
    return wrapped
