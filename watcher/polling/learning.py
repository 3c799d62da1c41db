"""The live side of adaptive polling (SPEC §12): learn durations, persist them, pace polls, flag slow jobs.

The scheduler hands every poll result to `Learner.after_poll`: a terminal result teaches its type's
duration model (terminal `updatedAt` - `createdAt`, type = (workspace, upstream `name`)); a running job past
its type's `slow_quantile` gets one `job.slow` event. Under `strategy = "adaptive"`, `Learner.pace` is the
policy's delay for running jobs: the type's cached schedule at the job's age (now - `createdAt`), else
the backoff curve. All of that is a dict lookup or two per poll.

Everything that costs more runs in the learner's own loop, off the poll path: what was learnt goes to the
store in batches (a delta per type, which the store merges into what every replica learnt, so nothing is
overwritten), the merged model comes back, and the planner recomputes the schedules of types whose model
changed enough, a few types per round. The model is learnt under both strategies, so switching is instant.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from functools import partial
from typing import Any

import structlog

from watcher.clock import Clock, parse_timestamp
from watcher.events import slow_event
from watcher.health import StoreHealth
from watcher.loop import StoreLoop
from watcher.metrics import Metrics
from watcher.models import NewEvent, Watch
from watcher.polling.adaptive.model import DurationModels, ModelFormatError, TypeKey, TypeModel, merge_stored
from watcher.polling.adaptive.planner import Planner, slow_threshold
from watcher.polling.adaptive.schedule import AdaptiveSettings
from watcher.polling.policy import Decision, Pace, PollingPolicy, Route
from watcher.statuses import SLOW_EVENT
from watcher.store.base import JobTypeRow, Store

log = structlog.get_logger("watcher.learning")

TICK_S = 1.0  # how often schedules and slow thresholds catch up with the models
FLUSH_S = 5.0  # what was learnt is written at least this often...
FLUSH_AT = 256  # ...or as soon as this many finishes wait
REFRESH_TYPES = 8  # schedules recomputed per round at most: a round stays within tens of milliseconds
DELTA_WINDOW = 1 << 40  # a delta never rotates: all its finishes are new
MAX_SLOW_SEEN = 100_000  # job ids remembered as already slow (a duplicate is still one stored event)


class Learner(StoreLoop):
    """Duration models, their schedules and `job.slow`, kept in step with the store."""

    name = "learning"

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        clock: Clock,
        settings: AdaptiveSettings,
        policy: PollingPolicy,
        route: Route,
        *,
        adaptive: bool,
        rng: random.Random | None = None,
        health: StoreHealth | None = None,
        tick_s: float = TICK_S,
        flush_s: float = FLUSH_S,
    ) -> None:
        super().__init__(store, metrics, clock, rng, health)
        self.settings = settings
        self.adaptive = adaptive
        self.models = DurationModels(settings.window, settings.max_types)
        self.planner = Planner(self.models, settings, policy)
        self._route = route
        self._tick_s = tick_s
        self._flush_s = flush_s
        self._pending: dict[TypeKey, TypeModel] = {}  # learnt here, not yet in the store
        self._pending_count = 0
        self._last_flush = 0.0  # monotonic time of the last flush (set when the loop starts)
        self._changed: set[TypeKey] = set()  # types whose slow threshold is stale
        self._slow_at: dict[TypeKey, float] = {}  # type -> duration past which a job is slow
        self._slow_seen: OrderedDict[str, None] = OrderedDict()
        self._merge = partial(merge_stored, window=settings.window)
        self.loaded = False
        # The policy's delay for running jobs, or None: the backoff curve for every job.
        self.pace: Pace | None = self._pace if adaptive else None

    # -- the poll path ----------------------------------------------------------------------------------

    def _pace(self, watch: Watch, body: dict[str, Any], streak: int, now: float, rng: random.Random) -> float:
        name = body.get("name")
        key = (watch.workspace, name) if isinstance(name, str) else None
        created = parse_timestamp(body.get("createdAt")) if key is not None else None
        age = None if created is None else now - created
        return self.planner.delay(key, age, streak, rng)

    def after_poll(self, decision: Decision, body: dict[str, Any] | None, now: float) -> None:
        """Learn a finished job's duration, or add `job.slow` to a running job's decision once."""
        if body is None:
            return
        watch = decision.saved.watch
        name = body.get("name")
        if not isinstance(name, str):
            return
        key = (watch.workspace, name)
        if decision.final is not None:
            self._slow_seen.pop(watch.job_id, None)
            created = parse_timestamp(body.get("createdAt"))
            updated = parse_timestamp(body.get("updatedAt"))
            if created is not None and updated is not None and updated >= created:
                self._learn(key, updated - created, now)
            return
        slow_after = self._slow_at.get(key)
        if slow_after is None or watch.job_id in self._slow_seen:
            return
        created = parse_timestamp(body.get("createdAt"))
        if created is None or now - created < slow_after:
            return
        self._slow_seen[watch.job_id] = None
        if len(self._slow_seen) > MAX_SLOW_SEEN:
            self._slow_seen.popitem(last=False)
        event = slow_event(watch, body, now, now - created, slow_after)
        decision.saved.events = (*decision.saved.events, NewEvent(event, self._route(SLOW_EVENT, watch)))
        self._metrics.jobs_slow.inc()

    def _learn(self, key: TypeKey, duration_s: float, now: float) -> None:
        model = self.models.observe(key, duration_s, now)
        if self.adaptive:
            self.planner.note_changed(key, model)
        delta = self._pending.get(key)
        if delta is None:
            delta = self._pending[key] = TypeModel(DELTA_WINDOW)
        delta.add(duration_s, now)
        self._pending_count += 1
        self._changed.add(key)

    # -- the learner's loop -------------------------------------------------------------------------------

    async def _round(self) -> None:
        if not self.loaded:
            await self.load()
        due = self._clock.monotonic() - self._last_flush >= self._flush_s
        if self._pending and (due or self._pending_count >= FLUSH_AT):
            await self.flush()
            self._last_flush = self._clock.monotonic()
        self.refresh()

    async def run(self, stop: asyncio.Event) -> None:
        """Load the stored models, then flush, merge and recompute until `stop`; a last flush at the end.

        A bad row or a bug is no reason to stop polling (the schedules only go stale): a failed round is
        logged (`learning.failed`), counted and tried again.
        """
        self._last_flush = self._clock.monotonic()
        await self.run_rounds(stop, self._round, lambda _took: self._tick_s)
        try:
            await self.flush()
        except Exception as exc:  # what was not written is relearnt from the next finishes
            log.warning("learning.not_saved", types=len(self._pending), error=str(exc))

    async def load(self) -> None:
        """Take in every stored model (what this and other replicas learnt before)."""
        for row in await self._store.load_job_types():
            try:
                model = TypeModel.from_bytes(row.model)
            except ModelFormatError as exc:
                log.warning(
                    "learning.model_unreadable", workspace=row.workspace, name=row.name, error=str(exc)
                )
                continue
            self._take((row.workspace, row.name), model)
        self.loaded = True
        log.info("learning.loaded", types=len(self.models))

    async def flush(self) -> None:
        """Add what was learnt since the last flush to the store; take back the merged models."""
        if not self._pending:
            return
        deltas, self._pending, self._pending_count = self._pending, {}, 0
        rows = [JobTypeRow(ws, name, m.to_bytes()) for (ws, name), m in deltas.items()]
        try:
            merged = await self._store.merge_job_types(
                rows, self._merge, self._clock.now(), self.settings.max_types
            )
        except BaseException:
            for key, delta in deltas.items():  # keep them for the next flush, with what came since
                newer = self._pending.get(key)
                if newer is not None:
                    delta.merge(newer)
                self._pending[key] = delta
            self._pending_count = sum(round(m.current.count) for m in self._pending.values())
            raise
        for row in merged:
            self._take((row.workspace, row.name), TypeModel.from_bytes(row.model))

    def _take(self, key: TypeKey, model: TypeModel) -> None:
        newer = self._pending.get(key)
        if newer is not None:  # learnt while the store merged: not in the stored model yet
            model.merge(newer)
        model = self.models.put(key, model)
        if self.adaptive:
            self.planner.note_changed(key, model)
        self._changed.add(key)

    def refresh(self) -> None:
        """Recompute a few stale schedules and every stale slow threshold (off the poll path)."""
        if self.adaptive and self.planner.dirty:
            self.planner.refresh(REFRESH_TYPES)
        changed, self._changed = self._changed, set()
        for key in changed:
            threshold = slow_threshold(
                self.models.get(key), self.settings.slow_quantile, self.settings.min_samples
            )
            if threshold is None:
                self._slow_at.pop(key, None)
            else:
                self._slow_at[key] = threshold
        if len(self._slow_at) > len(self.models):  # types dropped to stay within adaptive_max_types
            for key in [k for k in self._slow_at if self.models.get(k) is None]:
                del self._slow_at[key]

    def type_rows(self) -> list[dict[str, object]]:
        """What `GET /v1/job-types` and the status page list, one row per known type."""
        return self.planner.type_rows()
