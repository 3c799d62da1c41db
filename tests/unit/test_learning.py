"""The learner (SPEC §12): learns from terminal results, flushes deltas to a real store, paces polls from
cached schedules, and adds `job.slow` once per watch."""

from __future__ import annotations

import contextlib
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from watcher.devtools.clock import ManualClock
from watcher.metrics import Metrics
from watcher.models import PollOutcome, PollResult, Source, Watch
from watcher.polling.adaptive import AdaptiveSettings
from watcher.polling.adaptive.model import TypeModel
from watcher.polling.learning import Learner
from watcher.polling.policy import PollingPolicy, decide, poll_delay
from watcher.store.base import JobTypeRow, Store
from watcher.store.memory import MemoryStore
from watcher.store.sqlite import SQLiteStore

POLICY = PollingPolicy(5.0, 1.5, 60.0, 0.2, 86400.0, 5, 300.0)
SETTINGS = AdaptiveSettings(lag_target_s=20.0, min_samples=20)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def learner(store: Store, clock: ManualClock, *, adaptive: bool = True) -> Learner:
    metrics = Metrics(CollectorRegistry(), default_collectors=False)
    return Learner(
        store, metrics, clock, SETTINGS, POLICY, lambda *_: ("ops",), adaptive=adaptive, rng=random.Random(1)
    )


def body(status: str, created: float, updated: float, name: str = "train") -> dict[str, Any]:
    return {"id": "j", "status": status, "name": name, "createdAt": iso(created), "updatedAt": iso(updated)}


def poll(ln: Learner, job: str, b: dict[str, Any], now: float, status: str | None = "active") -> Any:
    """One poll of `job` through `decide` with the learner's pace, then `after_poll`, as the scheduler."""
    watch = Watch(job_id=job, workspace="acme", sources=int(Source.API), registered_at=now - 1, status=status)
    decision = decide(
        watch, PollResult(PollOutcome.OK, body=b), now, POLICY, random.Random(2), lambda *_: ("ops",), ln.pace
    )
    ln.after_poll(decision, b, now)
    return decision


def finish_many(ln: Learner, clock: ManualClock, n: int, duration: float) -> None:
    for i in range(n):
        now = clock.now()
        poll(ln, f"j{i}", body("success", now - duration, now - 1), now)


async def test_learns_flushes_and_survives_a_restart(tmp_path: Path) -> None:
    """Durations are learnt from terminal results, merged into the store, and loaded by a new learner."""
    clock = ManualClock()
    store = SQLiteStore(tmp_path / "w.db")
    await store.open()
    ln = learner(store, clock)
    await ln.load()
    finish_many(ln, clock, 25, 101.0)
    await ln.flush()
    await store.close()

    again = SQLiteStore(tmp_path / "w.db")
    await again.open()
    fresh = learner(again, clock)
    await fresh.load()
    (row,) = fresh.type_rows()
    assert (row["workspace"], row["name"], row["samples"]) == ("acme", "train", 25)
    assert 95.0 <= float(row["p50_s"]) <= 105.0  # type: ignore[arg-type]
    await again.close()


async def test_a_failed_flush_keeps_what_was_learnt() -> None:
    """The store refusing a flush loses nothing: the next flush writes it together with what came since."""
    clock = ManualClock()

    class Refusing(MemoryStore):
        refuse = True

        async def merge_job_types(self, *a: Any, **kw: Any) -> Any:
            if self.refuse:
                raise OSError("out")
            return await super().merge_job_types(*a, **kw)

    store = Refusing()
    ln = learner(store, clock)
    finish_many(ln, clock, 3, 10.0)
    with contextlib.suppress(OSError):
        await ln.flush()
    finish_many(ln, clock, 2, 10.0)
    store.refuse = False
    await ln.flush()
    (row,) = await store.load_job_types()
    assert TypeModel.from_bytes(row.model).samples == 5


async def test_pace_is_backoff_until_learnt_then_the_schedule() -> None:
    """Below min_samples the backoff curve; once the schedule is computed, a young job waits for its type."""
    clock = ManualClock()
    ln = learner(MemoryStore(), clock)
    now = clock.now()
    young = body("active", now - 2.0, now - 2.0)
    backoff = poll_delay(0, POLICY, random.Random(2))
    assert poll(ln, "a", young, now, status=None).saved.watch.next_poll_at == now + backoff
    rng = random.Random(3)
    for i in range(200):
        d = rng.uniform(290.0, 310.0)
        poll(ln, f"j{i}", body("success", now - d, now), now)
    ln.refresh()
    assert ln.planner.schedule(("acme", "train")) is not None
    delay = poll(ln, "a", young, now, status=None).saved.watch.next_poll_at - now
    assert delay > 100.0  # the first finishes are ~290 s after creation: nothing to see before
    other = poll(ln, "b", body("active", now - 2.0, now - 2.0, name="unknown.kind"), now, status=None)
    assert other.saved.watch.next_poll_at - now < 10.0  # an unlearnt type: the backoff curve


async def test_backoff_strategy_learns_but_never_paces() -> None:
    """Under `backoff` the model is learnt (switching is instant) but `pace` is None."""
    clock = ManualClock()
    ln = learner(MemoryStore(), clock, adaptive=False)
    assert ln.pace is None
    finish_many(ln, clock, 30, 50.0)
    ln.refresh()
    assert ln.type_rows()[0]["samples"] == 30


async def test_job_slow_once_per_watch() -> None:
    """A job past its type's p99 gets one `job.slow`; later polls of it and finished jobs get none."""
    clock = ManualClock()
    ln = learner(MemoryStore(), clock, adaptive=False)
    finish_many(ln, clock, 40, 50.0)
    ln.refresh()
    now = clock.now()
    early = poll(ln, "s", body("active", now - 10.0, now - 10.0), now)
    assert [e.event.type for e in early.saved.events] == []
    late = poll(ln, "s", body("active", now - 200.0, now - 200.0), now)
    (slow,) = late.saved.events
    assert (slow.event.type, slow.webhooks) == ("job.slow", ("ops",))
    assert slow.event.payload["data"]["slow_after_s"] < 60.0
    again = poll(ln, "s", body("active", now - 300.0, now - 300.0), now)
    assert again.saved.events == ()
    assert ln._metrics.jobs_slow._value.get() == 1.0


async def test_an_unreadable_stored_model_is_skipped_then_replaced() -> None:
    """A row no version can read does not stop the start-up: skipped, and the next flush replaces it."""
    clock = ManualClock()
    store = MemoryStore()
    await store.merge_job_types([JobTypeRow("acme", "train", b"\x09junk")], lambda s, d: d, clock.now(), 10)
    await store.merge_job_types(
        [JobTypeRow("acme", "etl", delta_of(5, 30.0))], lambda s, d: d, clock.now(), 10
    )
    ln = learner(store, clock)
    await ln.load()
    assert [(r["name"], r["samples"]) for r in ln.type_rows()] == [("etl", 5)]
    finish_many(ln, clock, 2, 10.0)
    await ln.flush()
    stored = {r.name: TypeModel.from_bytes(r.model).samples for r in await store.load_job_types()}
    assert stored == {"etl": 5, "train": 2}


def delta_of(n: int, duration: float) -> bytes:
    """A serialised model of `n` finishes of `duration`."""
    m = TypeModel()
    for i in range(n):
        m.add(duration, float(i))
    return m.to_bytes()
