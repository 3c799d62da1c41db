"""The scheduler's writer: poll results go to the store in batches, without making a poll wait."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from watcher.errors import StoreUnavailable
from watcher.polling.policy import Decision
from watcher.store.base import Store


@dataclass(frozen=True, slots=True)
class WriterEvents:
    """What a `BatchWriter` tells its owner (the scheduler)."""

    saved: Callable[[list[Decision], list[bool]], None]  # a batch was committed, with the store's verdicts
    failed: Callable[[BaseException], None]  # writing failed for good: nothing more is written
    item_failed: Callable[[Decision, BaseException], None]  # one decision's own data made its save fail
    wait_out: Callable[[StoreUnavailable], Awaitable[None]] | None = None  # an outage: back off, then retry
    recovered: Callable[[], None] | None = None  # a write worked again after an outage


class BatchWriter:
    """Coalesces poll results into `save_polls` calls (one transaction each) without making polls wait.

    A poll hands its decision over and goes on to the next watch; its watch stays claimed until the batch
    that carries it is committed, so nobody polls it twice meanwhile. One flush runs at a time. A decision
    that stores an event (a transition, a verdict) is written at once, since a webhook waits for it; the
    others (most polls see no change) linger up to `linger_s` so they are written in bigger batches, which
    costs the store less per row. Its owner hears of each batch and failure through `WriterEvents`.

    A batch that fails for a reason of its own items (not the store being out) is split in halves until
    each failing item is alone (one poisoned row must not take the others with it, SPEC §16); each such
    item goes to `item_failed`. A store outage (`StoreUnavailable`) is different: what is not written
    yet is kept and written again after `wait_out` (the caller's backoff) until the store takes it, and
    `stalled` is true meanwhile so that the scheduler neither claims nor polls; `recovered` is called when
    a write works again. Without `wait_out`, an outage goes to `failed` and nothing more is written.
    """

    def __init__(
        self,
        store: Store,
        events: WriterEvents,
        max_batch: int = 512,
        linger_s: float = 0.1,
        *,
        finish_gate: asyncio.Lock | None = None,
    ) -> None:
        self._store = store
        # Held while a batch that finishes watches is saved and counted (`watcher.metrics.FinishLedger`).
        self._finish_gate = finish_gate
        self._events = events
        self._healthy = asyncio.Event()
        self._healthy.set()
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._pending: list[Decision] = []
        self._urgent = False  # something pending must not linger
        self._writing = 0
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._failed = False

    @property
    def unsaved(self) -> int:
        """Decisions handed over and not yet committed (the batch being written included)."""
        return len(self._pending) + self._writing

    @property
    def stalled(self) -> bool:
        """True while the store is out and a batch waits to be written again."""
        return not self._healthy.is_set()

    async def wait_healthy(self, halt: asyncio.Event) -> None:
        """Wait until the store takes writes again, or until `halt` is set."""
        waiters = {asyncio.ensure_future(self._healthy.wait()), asyncio.ensure_future(halt.wait())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def cancel(self) -> None:
        """Stop writing for good (the daemon gave up on the drain); what is pending is not saved."""
        self._failed = True  # nothing is scheduled again
        if self._task is not None:
            self._task.cancel()

    def add(self, decision: Decision) -> None:
        """Hand one decision over; it is written with the next batch."""
        self._pending.append(decision)
        if decision.saved.events or len(self._pending) >= self._max_batch:
            self._urgent = True
        self._schedule()

    async def drained(self) -> None:
        """Write everything pending now, without lingering, and wait until it is committed (or failed)."""
        self._urgent = True
        self._schedule()
        await self._idle.wait()

    async def _save(self, batch: list[Decision]) -> None:
        """Save `batch`, splitting it around items whose own data makes the save fail.

        On an outage, what is not written yet goes back in front of the pending decisions (its watches
        stay claimed by us until it is written) and the outage is raised.
        """
        parts = [batch]
        while parts:
            part = parts.pop()
            try:
                results = await self._store.save_polls([d.saved for d in part])
            except StoreUnavailable:
                self._pending[:0] = [d for p in (part, *reversed(parts)) for d in p]
                raise
            except Exception as exc:  # the items' own: not the store being out (SPEC §16)
                if len(part) == 1:
                    self._events.item_failed(part[0], exc)
                else:
                    half = len(part) // 2
                    parts += [part[half:], part[:half]]  # the first half is tried first
                continue
            if not self._healthy.is_set():
                self._healthy.set()
                if self._events.recovered is not None:
                    self._events.recovered()
            self._events.saved(part, results)

    def _schedule(self) -> None:
        if self._failed or self._task is not None or not self._pending:
            return
        self._idle.clear()
        if self._urgent:
            self._start()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger_s, self._start)

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is None:
            self._task = asyncio.create_task(self._flush(), name="scheduler-writer")

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                self._urgent = len(self._pending) >= self._max_batch or any(
                    d.saved.events for d in self._pending
                )
                self._writing = len(batch)
                try:
                    gate: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()
                    if self._finish_gate is not None and any(d.final is not None for d in batch):
                        gate = self._finish_gate
                    async with gate:
                        await self._save(batch)
                except StoreUnavailable as exc:
                    if self._events.wait_out is None:
                        self._failed = True
                        self._pending = []
                        self._events.failed(exc)
                        return
                    self._healthy.clear()
                    await self._events.wait_out(exc)
                    continue
                except Exception as exc:
                    self._failed = True
                    self._pending = []
                    self._events.failed(exc)
                    return
                finally:
                    self._writing = 0
                if not self._urgent:
                    break  # the rest may linger for company
        finally:
            self._task = None
            if self._pending and not self._failed:
                self._schedule()
            else:
                self._idle.set()
