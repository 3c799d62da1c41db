"""Upstream errors in the log: one line per burst, the rest counted (an outage must not flood the log)."""

from __future__ import annotations

import structlog

from watcher.clock import Clock
from watcher.models import PollResult, Watch

log = structlog.get_logger("watcher.scheduler")


class ErrorLogLimiter:
    """Logs upstream errors once per burst: an outage must not flood the log.

    Per (workspace, outcome), the first error is logged as `upstream.error`; the next ones within `window_s`
    are only counted. The first one after the window is logged with `suppressed`, the count since the last
    line; when a burst is over (a poll finds its window elapsed), `upstream.error_burst_end` reports what
    was still suppressed, so no count is lost.
    """

    def __init__(self, clock: Clock, window_s: float = 10.0) -> None:
        self._clock = clock
        self._window_s = window_s
        self._since: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def error(self, watch: Watch, result: PollResult) -> None:
        """Record one failed poll, logging it if its kind has not been logged in this window."""
        key = (watch.workspace, result.outcome.value)
        now = self._clock.monotonic()
        start = self._since.get(key)
        if start is not None and now - start < self._window_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        suppressed = self._suppressed.pop(key, 0)
        self._since[key] = now
        log.warning(
            "upstream.error",
            job_id=watch.job_id,
            workspace=watch.workspace,
            reason=result.outcome.value,
            status_code=result.status_code,
            detail=result.detail,
            suppressed=suppressed,
        )

    def settle(self) -> None:
        """Close the bursts whose window has elapsed, logging what they suppressed (cheap when none)."""
        if not self._since:
            return
        now = self._clock.monotonic()
        for key, start in list(self._since.items()):
            if now - start < self._window_s:
                continue
            del self._since[key]
            suppressed = self._suppressed.pop(key, 0)
            if suppressed:
                log.warning(
                    "upstream.error_burst_end",
                    workspace=key[0],
                    reason=key[1],
                    suppressed=suppressed,
                    window_s=self._window_s,
                )
