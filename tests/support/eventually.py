"""The one way a test waits for something: `eventually(check, timeout, what)`.

A bounded wait on a condition, never a fixed sleep: the check runs at once and then every few
milliseconds until it holds; after `timeout` seconds the test fails naming `what`. `timeout` is a bound
for a slow, shared machine, not an expected duration.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

_FIRST_PAUSE_S = 0.005  # the pause grows from this to `_MAX_PAUSE_S`: quick when it is quick, cheap if not
_MAX_PAUSE_S = 0.05


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]], timeout: float = ..., what: str = ...
) -> T: ...
@overload
async def eventually(check: Callable[[], T | None], timeout: float = ..., what: str = ...) -> T: ...


async def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Call `check` (sync or async) until it returns something true, and return that.

    Fails with an AssertionError naming `what` (or the check) after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    pause = _FIRST_PAUSE_S
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or _describe(check)}")
        await asyncio.sleep(pause)
        pause = min(_MAX_PAUSE_S, pause * 2)


def _describe(check: Callable[[], Any]) -> str:
    """The check's source line (a lambda names nothing else), or its name."""
    try:
        return " ".join(inspect.getsource(check).split())[:200]
    except (OSError, TypeError):
        return getattr(check, "__name__", repr(check))
