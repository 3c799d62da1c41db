"""One watch whose handling raised: counted against the watch, written down, quarantined at the limit.

The scheduler's workers and its batch writer hand such a failure here and go on with the next watch
(SPEC §16). The watch stays claimed until the failure is written; then it is due again after an error
backoff, or quarantined at `QUARANTINE_AFTER` failures. If the failure cannot be written either, the
claim's lease runs out and the watch is polled again later, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import structlog

from watcher.clock import Clock
from watcher.containment import QUARANTINE_AFTER, describe
from watcher.models import Watch
from watcher.polling.policy import PollingPolicy, error_delay
from watcher.store.base import Store

log = structlog.get_logger("watcher.scheduler")


class FailureNotes:
    """Writes each watch's failure in a task of its own; `pending`: is one still being written?"""

    def __init__(
        self,
        store: Store,
        policy: PollingPolicy,
        clock: Clock,
        rng: random.Random,
        *,
        contained: Callable[[], None],
        noted: Callable[[], None],
    ) -> None:
        self._store, self._policy, self._clock, self._rng = store, policy, clock, rng
        self._contained = contained  # counts the error survived (`watcher_internal_errors_total`)
        self._noted = noted  # a failure was written: the watch is due again later
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> bool:
        """True while a failure is being written."""
        return bool(self._tasks)

    async def drained(self) -> None:
        """Wait until every failure handed over is written (or given up)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    def failed(self, watch: Watch, exc: BaseException) -> None:
        """Contain an unexpected exception of one watch's handling: log it, count it against the watch."""
        self._contained()
        log.error(
            "watch.handling_failed",
            job_id=watch.job_id,
            workspace=watch.workspace,
            failures=watch.failures + 1,
            exc_info=exc,
        )
        task = asyncio.create_task(self._note(watch, describe(exc)), name="note-failure")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _note(self, watch: Watch, reason: str) -> None:
        now = self._clock.now()
        retry_at = now + error_delay(watch.failures + 1, self._policy, self._rng)
        try:
            noted = await self._store.note_failure(watch, reason, now, retry_at, QUARANTINE_AFTER)
        except Exception as exc:
            log.warning("watch.failure_not_recorded", job_id=watch.job_id, error=describe(exc))
            return
        if noted.quarantined:
            log.error(
                "watch.quarantined",
                job_id=watch.job_id,
                workspace=watch.workspace,
                failures=noted.failures,
                reason=reason,
            )
        self._noted()
