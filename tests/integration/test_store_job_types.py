"""The store contract for job types (SPEC §12): duration models persist, merge and stay bounded."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

from tests.support.postgres import pg_schema
from watcher.polling.adaptive.model import TypeModel, merge_stored
from watcher.store.base import JobTypeRow, Store
from watcher.store.postgres import PostgresStore
from watcher.store.sqlite import SQLiteStore

T0 = 1_700_000_000.0
WINDOW = 1000
MERGE = partial(merge_stored, window=WINDOW)


def delta(durations: list[float], at: float = T0) -> bytes:
    """A serialised model holding `durations`, as a replica flushes it."""
    m = TypeModel(10**9)
    for d in durations:
        m.add(d, at)
    return m.to_bytes()


def samples(rows: list[JobTypeRow]) -> dict[tuple[str, str], int]:
    """Each row's number of finishes."""
    return {(r.workspace, r.name): TypeModel.from_bytes(r.model).samples for r in rows}


async def test_merge_adds_and_load_returns(store: Store) -> None:
    """Two deltas of one type add up; another type is kept apart; load returns what merge returned."""
    first = await store.merge_job_types([JobTypeRow("acme", "train", delta([10.0] * 3))], MERGE, T0, 10)
    assert samples(first) == {("acme", "train"): 3}
    rows = await store.merge_job_types(
        [JobTypeRow("acme", "train", delta([12.0] * 2)), JobTypeRow("acme", "etl", delta([5.0]))],
        MERGE,
        T0 + 1,
        10,
    )
    assert samples(rows) == {("acme", "train"): 5, ("acme", "etl"): 1}
    assert samples(await store.load_job_types()) == {("acme", "train"): 5, ("acme", "etl"): 1}
    median = TypeModel.from_bytes((await store.load_job_types())[-1].model).quantile(0.5)
    assert median is not None


async def test_types_beyond_max_are_dropped_stalest_first(store: Store) -> None:
    """At most `max_types` rows stay: the least recently updated go."""
    for i in range(4):
        await store.merge_job_types([JobTypeRow("acme", f"t{i}", delta([1.0]))], MERGE, T0 + i, 3)
    assert sorted(samples(await store.load_job_types())) == [("acme", "t1"), ("acme", "t2"), ("acme", "t3")]


async def test_a_damaged_stored_model_is_replaced_not_stuck(store: Store) -> None:
    """A row no version can read does not block learning: the next delta replaces it."""
    await store.merge_job_types([JobTypeRow("acme", "x", b"\xffgarbage")], lambda s, d: d, T0, 10)
    rows = await store.merge_job_types([JobTypeRow("acme", "x", delta([3.0]))], MERGE, T0 + 1, 10)
    assert samples(rows) == {("acme", "x"): 1}


async def test_sqlite_models_survive_a_restart(tmp_path: Path) -> None:
    """Closed and opened again, the file still holds the merged model."""
    path = tmp_path / "w.db"
    store = SQLiteStore(path)
    await store.open()
    await store.merge_job_types([JobTypeRow("acme", "train", delta([10.0] * 4))], MERGE, T0, 10)
    await store.close()
    again = SQLiteStore(path)
    await again.open()
    try:
        assert samples(await again.load_job_types()) == {("acme", "train"): 4}
    finally:
        await again.close()


async def test_two_postgres_replicas_merge_never_overwrite() -> None:
    """Two stores on one schema add samples at once: the merged sketch holds both, and survives a restart."""
    async with pg_schema("jobtypes") as url:
        a, b = PostgresStore(url), PostgresStore(url)
        await a.open()
        await b.open()
        try:

            async def adds(store: Store, value: float) -> None:
                for i in range(10):
                    rows = [
                        JobTypeRow("acme", "train", delta([value] * 3)),
                        JobTypeRow("acme", f"n{i}", delta([1.0])),
                    ]
                    await store.merge_job_types(rows, MERGE, T0 + i, 100)

            await asyncio.gather(adds(a, 10.0), adds(b, 1000.0))
            merged = {(r.workspace, r.name): TypeModel.from_bytes(r.model) for r in await b.load_job_types()}
            train = merged[("acme", "train")]
            assert train.samples == 60
            assert train.quantile(0.25) is not None and train.quantile(0.25) < 20  # type: ignore[operator]
            assert train.quantile(0.75) is not None and train.quantile(0.75) > 500  # type: ignore[operator]
            assert merged[("acme", "n3")].samples == 2
        finally:
            await a.close()
            await b.close()
        restarted = PostgresStore(url)
        await restarted.open()
        try:
            assert samples(await restarted.load_job_types())[("acme", "train")] == 60
        finally:
            await restarted.close()
