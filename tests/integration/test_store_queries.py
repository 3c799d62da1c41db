"""The store queries behind the HTTP API and the status page, run against every `Store` implementation."""

from __future__ import annotations

from watcher.models import DeliveryState, DeliveryUpdate, Source
from watcher.store.base import Store

from .test_store_contract import LEASE, T0, claim_one, jid, polled, reg


async def _finish(store: Store, n: int, status: str, now: float, hooks: tuple[str, ...] = ("ops",)) -> None:
    """Register job `n` and save one poll that saw `status`."""
    await store.register([reg(n)], now)
    w = await claim_one(store, now)
    assert await store.save_polls([polled(w, status, now, hooks=hooks)]) == [True]


class TestListWatchesByLabel:
    """list_watches(label=...): exact key and value, combined with status and the cursor."""

    async def test_label_filter(self, store: Store) -> None:
        """Only watches whose label maps the key to exactly the value are listed, in id order."""
        await store.register(
            [
                reg(1, labels={"team": "billing"}),
                reg(2, labels={"team": "ops"}),
                reg(3, labels={"team": "billing", "env": "prod"}),
                reg(4),
                reg(5, labels={"team.x": "billing", "Team": "billing"}),
            ],
            T0,
        )
        page = await store.list_watches(label=("team", "billing"))
        assert [w.job_id for w in page.watches] == [jid(1), jid(3)]
        assert page.next_cursor is None
        odd = await store.list_watches(label=("team.x", "billing"))
        assert [w.job_id for w in odd.watches] == [jid(5)]
        assert (await store.list_watches(label=("team", "bill"))).watches == []

    async def test_label_with_status_and_cursor(self, store: Store) -> None:
        """Pages of a filtered list follow the cursor and end with next_cursor None."""
        await store.register([reg(n, labels={"k": "v"}) for n in range(1, 6)], T0)
        await store.register([reg(9, labels={"k": "w"})], T0)
        first = await store.list_watches(label=("k", "v"), status="unknown", limit=2)
        assert [w.job_id for w in first.watches] == [jid(1), jid(2)]
        assert first.next_cursor == jid(2)
        rest = await store.list_watches(
            label=("k", "v"), status="unknown", limit=10, cursor=first.next_cursor
        )
        assert [w.job_id for w in rest.watches] == [jid(3), jid(4), jid(5)]
        assert rest.next_cursor is None


class TestDeliveryQueries:
    """list_deliveries(before=, job_id=) and get_delivery."""

    async def test_cursor_pages_newest_first(self, store: Store) -> None:
        """Following `before` with the last id of each page visits every delivery once, newest first."""
        for n in range(1, 6):
            await _finish(store, n, "success", T0 + n, hooks=("ops", "audit"))
        everything = await store.list_deliveries(limit=100)
        assert len(everything) == 10
        ids = [d.id for d in everything]
        assert ids == sorted(ids, reverse=True)
        seen: list[int] = []
        before: int | None = None
        for _ in range(10):
            page = await store.list_deliveries(limit=3, before=before)
            if not page:
                break
            seen += [d.id for d in page]
            before = page[-1].id
        assert seen == ids
        audit = await store.list_deliveries(webhook="audit", limit=2, before=ids[0])
        assert all(d.webhook == "audit" for d in audit) and len(audit) == 2

    async def test_deliveries_of_one_job(self, store: Store) -> None:
        """job_id keeps one job's deliveries, with their event."""
        await _finish(store, 1, "failed", T0, hooks=("ops", "audit"))
        await _finish(store, 2, "success", T0)
        mine = await store.list_deliveries(job_id=jid(1))
        assert {d.webhook for d in mine} == {"ops", "audit"}
        assert all(d.event.job_id == jid(1) and d.event.type == "job.failed" for d in mine)
        assert await store.list_deliveries(job_id=jid(3)) == []

    async def test_get_delivery(self, store: Store) -> None:
        """get_delivery returns any state, None for an unknown id."""
        await _finish(store, 1, "failed", T0)
        (d,) = await store.claim_deliveries(T0, 10, LEASE)
        update = DeliveryUpdate(DeliveryState.DEAD, 3, T0 + 1, "HTTP 500")
        assert await store.finish_delivery(d, update)
        got = await store.get_delivery(d.id)
        assert got is not None
        assert (got.state, got.attempts, got.last_error, got.event.id) == (
            DeliveryState.DEAD,
            3,
            "HTTP 500",
            d.event.id,
        )
        assert await store.get_delivery(d.id + 1000) is None


class TestRecentEventsAndCounts:
    """recent_events across jobs and watch_counts including finished watches."""

    async def test_recent_events_newest_first(self, store: Store) -> None:
        """The newest events come first and `limit` bounds the list."""
        await _finish(store, 1, "active", T0)
        await _finish(store, 2, "failed", T0 + 1)
        await _finish(store, 3, "success", T0 + 2)
        recent = await store.recent_events(2)
        assert [(e.job_id, e.type) for e in recent] == [(jid(3), "job.success"), (jid(2), "job.failed")]
        assert len(await store.recent_events(10)) == 3
        assert await store.recent_events(0) == []

    async def test_watch_counts(self, store: Store) -> None:
        """Finished watches count under their final state, unpolled ones as unknown."""
        await _finish(store, 1, "active", T0)
        await _finish(store, 2, "failed", T0)
        await _finish(store, 3, "success", T0)
        await store.register([reg(4), reg(5, Source.FILE)], T0)
        assert await store.watch_counts() == {"active": 1, "failed": 1, "success": 1, "unknown": 2}
        assert (await store.counts()).watched_by_status == {"active": 1, "unknown": 2}


class TestDeleteThenRegisterAgain:
    """A deleted watch registered again is a fresh watch; a delivered identical event is delivered again."""

    async def test_fresh_watch_after_delete(self, store: Store) -> None:
        """Delete drops delivered events, so the same transition seen again is stored and routed again."""
        await _finish(store, 1, "success", T0)
        (d,) = await store.claim_deliveries(T0, 10, LEASE)
        assert await store.finish_delivery(d, DeliveryUpdate(DeliveryState.DELIVERED, 1, T0, None, T0))
        assert await store.delete_watch(jid(1))
        assert await store.get_watch(jid(1)) is None
        await _finish(store, 1, "success", T0 + 100)
        w = await store.get_watch(jid(1))
        assert w is not None and w.registered_at == T0 + 100 and w.polls == 1
        events = await store.events_for(jid(1))
        assert [e.id for e in events] == [d.event.id]
        (again,) = await store.list_deliveries(job_id=jid(1))
        assert again.state is DeliveryState.PENDING and again.event.id == d.event.id
