"""The scheduler's batch writer (`watcher.polling.writer.BatchWriter`) on its own: a `MemoryStore` with a
small fake at the store seam that records each `save_polls` batch, and can refuse one row or be out.

Decisions are the policy's own (`decide`) for watches claimed from the store, as the scheduler makes them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

from tests.support.eventually import eventually
from watcher.devtools.clock import ManualClock
from watcher.errors import StoreError, StoreUnavailable
from watcher.models import PollOutcome, PollResult, Registration, SavedPoll, Source
from watcher.polling.policy import Decision, PollingPolicy, decide
from watcher.polling.writer import BatchWriter, WriterEvents
from watcher.store.memory import MemoryStore

POLICY = PollingPolicy(1.0, 2.0, 8.0, 0.0, 100.0, 3, 4.0)
JOBS = [f"00000000-0000-4000-8000-{n:012d}" for n in range(1, 9)]
POISONED = JOBS[3]


class RecordingStore(MemoryStore):
    """Records each batch; refuses any batch carrying `refuse` (its data), or is out `outages` times."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.refuse: str | None = None
        self.outages = 0

    async def save_polls(self, polls: Sequence[SavedPoll]) -> list[bool]:
        ids = [p.watch.job_id for p in polls]
        self.batches.append(ids)
        if self.outages:
            self.outages -= 1
            raise StoreUnavailable("store: the database is out")
        if self.refuse in ids:
            raise StoreError("store: value refused")
        return await super().save_polls(polls)


class Owner:
    """The writer's owner, as the scheduler is: hears of saved batches and failures."""

    def __init__(self) -> None:
        self.saved: list[tuple[list[str], list[bool]]] = []
        self.failed: list[BaseException] = []
        self.item_failed: list[str] = []
        self.outages = 0
        self.recovered = 0

    def events(self, *, wait_out: bool = True) -> WriterEvents:
        async def waited(exc: StoreUnavailable) -> None:
            self.outages += 1
            await asyncio.sleep(0)

        return WriterEvents(
            saved=lambda batch, ok: self.saved.append(([d.saved.watch.job_id for d in batch], ok)),
            failed=self.failed.append,
            item_failed=lambda d, exc: self.item_failed.append(d.saved.watch.job_id),
            wait_out=waited if wait_out else None,
            recovered=self._recovered,
        )

    def _recovered(self) -> None:
        self.recovered += 1

    @property
    def written(self) -> list[str]:
        return sorted(j for ids, ok in self.saved for j, good in zip(ids, ok, strict=True) if good)


async def decisions(store: MemoryStore, clock: ManualClock, status: str = "active") -> list[Decision]:
    """One decision per job: each watch claimed and polled once, as the scheduler would."""
    await store.register([Registration(j, "acme", Source.API) for j in JOBS], clock.now())
    watches = await store.claim_due(clock.now(), len(JOBS), 60.0)
    body = {"status": status, "updatedAt": "2023-11-14T22:13:20.000Z"}
    result = PollResult(PollOutcome.OK, body=body, status_code=200)
    rng = random.Random(1)
    return [decide(w, result, clock.now(), POLICY, rng, lambda t, w: ()) for w in watches]


async def quiet(store: RecordingStore, clock: ManualClock) -> list[Decision]:
    """Decisions without events: the jobs were seen `active` already, so this poll changes nothing."""
    first = await decisions(store, clock)
    assert await store.save_polls([d.saved for d in first]) == [True] * len(JOBS)
    store.batches.clear()
    await clock.advance(POLICY.initial_interval_s)
    watches = await store.claim_due(clock.now(), len(JOBS), 60.0)
    body = {"status": "active", "updatedAt": "2023-11-14T22:13:20.000Z"}
    result = PollResult(PollOutcome.OK, body=body, status_code=200)
    made = [decide(w, result, clock.now(), POLICY, random.Random(1), lambda t, w: ()) for w in watches]
    assert not any(d.saved.events for d in made)
    return made


async def test_quiet_decisions_linger_and_are_written_together() -> None:
    """Quiet polls are not written one by one: `drained` writes them as one batch and waits for it."""
    store, clock, owner = RecordingStore(), ManualClock(), Owner()
    made = await quiet(store, clock)
    writer = BatchWriter(store, owner.events(), linger_s=60.0)
    for d in made:
        writer.add(d)
    assert writer.unsaved == len(JOBS)
    await writer.drained()
    assert [sorted(b) for b in store.batches] == [sorted(JOBS)]
    assert owner.written == sorted(JOBS)
    assert writer.unsaved == 0


async def test_a_decision_with_an_event_is_written_at_once_and_takes_the_lingering_ones_along() -> None:
    """A transition does not linger (a webhook waits for it); the quiet ones pending go in its batch."""
    store, clock, owner = RecordingStore(), ManualClock(), Owner()
    quiet_ones = await quiet(store, clock)
    writer = BatchWriter(store, owner.events(), linger_s=60.0)
    for d in quiet_ones[:-1]:
        writer.add(d)
    changed = quiet_ones[-1]
    body = {"status": "failed", "updatedAt": "2023-11-14T22:13:20.000Z"}
    urgent = decide(
        changed.saved.watch, PollResult(PollOutcome.OK, body=body), clock.now(), POLICY, random.Random(1),
        lambda t, w: ("ops",),
    )  # fmt: skip
    writer.add(urgent)
    await eventually(lambda: writer.unsaved == 0, 10, "the urgent batch written without lingering")
    assert [sorted(b) for b in store.batches] == [sorted(JOBS)]
    assert [e.type for e in await store.events_for(changed.saved.watch.job_id)] == [
        "job.active",
        "job.failed",
    ]


async def test_batches_are_capped_at_max_batch() -> None:
    """Eight decisions, `max_batch=3`: three transactions, none bigger than three."""
    store, clock, owner = RecordingStore(), ManualClock(), Owner()
    made = await decisions(store, clock)
    writer = BatchWriter(store, owner.events(), max_batch=3, linger_s=60.0)
    for d in made:
        writer.add(d)
    await writer.drained()
    assert [len(b) for b in store.batches] == [3, 3, 2]
    assert owner.written == sorted(JOBS)


async def test_a_refused_row_is_split_out_and_the_others_are_saved() -> None:
    """One row the store refuses fails its batch; the writer halves around it until it is alone, hands it
    to `item_failed`, and saves every other decision."""
    store, clock, owner = RecordingStore(), ManualClock(), Owner()
    store.refuse = POISONED
    made = await decisions(store, clock)
    writer = BatchWriter(store, owner.events(), linger_s=60.0)
    for d in made:
        writer.add(d)
    await writer.drained()
    assert owner.item_failed == [POISONED]
    assert owner.written == sorted(j for j in JOBS if j != POISONED)
    assert owner.failed == []
    assert max(len(b) for b in store.batches) == len(JOBS)


async def test_an_outage_is_waited_out_and_nothing_is_lost() -> None:
    """The store is out twice: the batch is kept, `stalled` meanwhile, written once the store is back."""
    store, clock, owner = RecordingStore(), ManualClock(), Owner()
    made = await decisions(store, clock)
    store.outages = 2
    writer = BatchWriter(store, owner.events(), linger_s=60.0)
    for d in made:
        writer.add(d)
    await writer.drained()
    assert owner.outages == 2 and owner.recovered == 1
    assert owner.written == sorted(JOBS)
    assert not writer.stalled
    assert len(store.batches) == 3  # two refused by the outage, then the one that was written


async def test_without_wait_out_an_outage_fails_the_writer_for_good() -> None:
    """No `wait_out`: an outage goes to `failed`, and nothing more is written."""
    store, clock, owner = RecordingStore(), ManualClock(), Owner()
    made = await decisions(store, clock)
    store.outages = 1
    writer = BatchWriter(store, owner.events(wait_out=False), linger_s=60.0)
    for d in made:
        writer.add(d)
    await writer.drained()
    assert [type(e) for e in owner.failed] == [StoreUnavailable]
    assert owner.saved == []
    writer.add(made[0])
    await writer.drained()  # returns at once: nothing more is written
    assert len(store.batches) == 1
