"""The store contract: one suite run against every `Store` implementation, so the backends cannot drift."""

from __future__ import annotations

from dataclasses import replace

from watcher.events import transition_event, verdict_event
from watcher.models import (
    DeliveryState,
    DeliveryUpdate,
    FinalState,
    NewEvent,
    Registration,
    SavedPoll,
    Source,
    Watch,
)
from watcher.store.base import RegisterResult, Store, SyncResult

T0 = 1_700_000_000.0
LEASE = 30.0


def jid(n: int) -> str:
    """A job id that sorts by `n`."""
    return f"00000000-0000-4000-8000-{n:012d}"


def reg(n: int, source: Source = Source.API, **kw: object) -> Registration:
    """A registration for job `n`."""
    return Registration(job_id=jid(n), workspace="acme", source=source, **kw)  # type: ignore[arg-type]


def polled(
    w: Watch, status: str, now: float, *, hooks: tuple[str, ...] = ("ops",), updated: str = "u1"
) -> SavedPoll:
    """`w` after a successful poll that saw `status`, with the transition event routed to `hooks`."""
    terminal = status in ("success", "failed")
    new = replace(
        w,
        status=status,
        polls=w.polls + 1,
        next_poll_at=now + 10,
        last_polled_at=now,
        final=status if terminal else None,
        finished_at=now if terminal else None,
        upstream_updated_at=updated,
    )
    body = {"id": w.job_id, "status": status, "updatedAt": updated}
    return SavedPoll(new, (NewEvent(transition_event(new, body, w.status, now), hooks),))


async def claim_one(store: Store, now: float) -> Watch:
    """Claim exactly one due watch."""
    (w,) = await store.claim_due(now, 10, LEASE)
    return w


class TestRegister:
    """register: idempotent, merges sources, new watches due at once."""

    async def test_new_then_existing(self, store: Store) -> None:
        """A second registration is EXISTING and only adds its source."""
        labels = {"team": "billing"}
        first = await store.register(
            [reg(1, Source.FILE, labels=labels, webhooks=("ops",), max_watch_s=60.0)], T0
        )
        again = await store.register([reg(1, Source.API, labels={"team": "other"})], T0 + 5)
        assert first == [RegisterResult.CREATED]
        assert again == [RegisterResult.EXISTING]
        w = await store.get_watch(jid(1))
        assert w is not None
        assert w.sources == Source.FILE | Source.API
        assert (w.labels, w.webhooks, w.max_watch_s, w.registered_at) == (labels, ("ops",), 60.0, T0)
        assert (w.status, w.final, w.polls, w.next_poll_at) == (None, None, 0, T0)

    async def test_duplicates_in_one_batch(self, store: Store) -> None:
        """The same id twice in one call creates one watch."""
        res = await store.register([reg(1), reg(2), reg(1, Source.FILE)], T0)
        assert res == [RegisterResult.CREATED, RegisterResult.CREATED, RegisterResult.EXISTING]
        assert len((await store.list_watches()).watches) == 2
        w = await store.get_watch(jid(1))
        assert w is not None and w.sources == Source.FILE | Source.API

    async def test_new_watch_due_now(self, store: Store) -> None:
        """A new watch is due at the registration time, not before."""
        await store.register([reg(1)], T0)
        assert await store.next_due_at() == T0
        assert await store.claim_due(T0 - 1, 10, LEASE) == []
        assert [w.job_id for w in await store.claim_due(T0, 10, LEASE)] == [jid(1)]


class TestSyncSource:
    """sync_source: the watch-list file is declarative per source."""

    async def test_add_and_remove(self, store: Store) -> None:
        """Removing ids from the file unwatches them unless the API also registered them."""
        assert await store.sync_source(Source.FILE, [reg(1), reg(2)], T0) == SyncResult(added=2, removed=0)
        await store.register([reg(2, Source.API)], T0)
        assert await store.sync_source(Source.FILE, [reg(1), reg(2)], T0) == SyncResult(added=0, removed=0)
        assert await store.sync_source(Source.FILE, [], T0) == SyncResult(added=0, removed=2)
        assert await store.get_watch(jid(1)) is None
        survivor = await store.get_watch(jid(2))
        assert survivor is not None and survivor.sources == Source.API
        assert [w.job_id for w in await store.claim_due(T0, 10, LEASE)] == [jid(2)]

    async def test_removed_watch_takes_its_events_along(self, store: Store) -> None:
        """A watch the file drops goes with its events, except one still to deliver; none is orphaned."""
        await store.sync_source(Source.FILE, [reg(1, Source.FILE), reg(2, Source.FILE)], T0)
        for w in await store.claim_due(T0, 10, LEASE):
            hooks = ("ops",) if w.job_id == jid(2) else ()  # job 2's event waits for a delivery
            assert await store.save_polls([polled(w, "active", T0, hooks=hooks)]) == [True]
        assert len(await store.events_for(jid(1))) == 1 and len(await store.events_for(jid(2))) == 1
        assert await store.sync_source(Source.FILE, [], T0 + 1) == SyncResult(added=0, removed=2)
        assert await store.events_for(jid(1)) == []
        assert [e.type for e in await store.events_for(jid(2))] == ["job.active"]
        assert [d.event.job_id for d in await store.claim_deliveries(T0 + 2, 10, LEASE)] == [jid(2)]

    async def test_file_joins_api_watch(self, store: Store) -> None:
        """An API watch listed in the file gains the file source and counts as added."""
        await store.register([reg(1, Source.API)], T0)
        assert await store.sync_source(Source.FILE, [reg(1, Source.FILE)], T0) == SyncResult(
            added=1, removed=0
        )
        w = await store.get_watch(jid(1))
        assert w is not None and w.sources == Source.FILE | Source.API

    async def test_finished_watch_kept_for_retention(self, store: Store) -> None:
        """A finished watch dropped from the file stays visible until purged."""
        await store.sync_source(Source.FILE, [reg(1, Source.FILE)], T0)
        w = await claim_one(store, T0)
        assert await store.save_polls([polled(w, "success", T0)]) == [True]
        await store.sync_source(Source.FILE, [], T0 + 1)
        kept = await store.get_watch(jid(1))
        assert kept is not None and kept.final == "success"


class TestClaimDue:
    """claim_due: earliest first, limited, leased."""

    async def test_order_and_limit(self, store: Store) -> None:
        """Watches come out by due time, at most `limit`, only when due."""
        for n, at in [(1, T0 + 3), (2, T0 + 1), (3, T0 + 2), (4, T0 + 100)]:
            await store.register([reg(n)], at)
        assert await store.count_due(T0 + 3) == 3
        first = await store.claim_due(T0 + 3, 2, LEASE)
        assert [w.job_id for w in first] == [jid(2), jid(3)]
        assert [w.job_id for w in await store.claim_due(T0 + 3, 10, LEASE)] == [jid(1)]
        assert await store.claim_due(T0 + 3, 10, LEASE) == []
        assert await store.count_due(T0 + 3) == 0

    async def test_lease_excludes_until_expiry(self, store: Store) -> None:
        """A claimed watch is not handed out again before its lease runs out; then it is, with a new lease."""
        await store.register([reg(1)], T0)
        w1 = await claim_one(store, T0)
        assert await store.claim_due(T0 + LEASE - 1, 10, LEASE) == []
        assert await store.next_due_at() == T0 + LEASE  # claimable again at the lease expiry
        w2 = await claim_one(store, T0 + LEASE)
        assert w2.lease != w1.lease
        assert await store.save_polls([polled(w1, "active", T0 + LEASE)]) == [False]
        assert await store.save_polls([polled(w2, "active", T0 + LEASE)]) == [True]

    async def test_next_due_and_count(self, store: Store) -> None:
        """next_due_at is the earliest due time; count_due counts due, unclaimed watches."""
        assert await store.next_due_at() is None
        assert await store.count_due(T0) == 0
        await store.register([reg(1)], T0 + 5)
        await store.register([reg(2)], T0 + 2)
        assert await store.next_due_at() == T0 + 2
        assert await store.count_due(T0 + 5) == 2
        await store.claim_due(T0 + 5, 1, LEASE)
        assert await store.count_due(T0 + 5) == 1

    async def test_release_gives_back_an_unpolled_claim(self, store: Store) -> None:
        """A released claim is due again at its old due time; releasing a lease that moved on does nothing."""
        await store.register([reg(1)], T0)
        await store.register([reg(2)], T0 + 1)
        a, b = await store.claim_due(T0 + 1, 10, LEASE)
        await store.release([a])
        assert await store.next_due_at() == T0  # its old place, ahead of b's lease expiry
        assert await store.count_due(T0 + 1) == 1
        (again,) = await store.claim_due(T0 + 1, 10, LEASE)
        assert again.job_id == a.job_id and again.lease != a.lease
        await store.release([a])  # stale: the new claim stands
        assert await store.claim_due(T0 + 1, 10, LEASE) == []
        assert await store.save_polls([polled(again, "active", T0 + 1), polled(b, "active", T0 + 1)]) == [
            True,
            True,
        ]
        await store.release([again])  # saved already: nothing to give back
        assert await store.next_due_at() == T0 + 11

    async def test_claim_carries_every_field(self, store: Store) -> None:
        """A claimed watch has the labels, webhooks, deadline and polling state it was registered with."""
        r = reg(
            1, labels={"team": "ml", "q": 'a "quoted" \\ value'}, webhooks=("ops", "slack"), max_watch_s=90.5
        )
        await store.register([r, reg(2)], T0 + 0.25)
        w, plain = await store.claim_due(T0 + 1, 10, LEASE)
        assert (w.job_id, w.workspace, w.labels, w.webhooks, w.max_watch_s) == (
            jid(1),
            "acme",
            {"team": "ml", "q": 'a "quoted" \\ value'},
            ("ops", "slack"),
            90.5,
        )
        assert (w.registered_at, w.next_poll_at, w.status, w.polls, w.final) == (
            T0 + 0.25,
            T0 + 0.25,
            None,
            0,
            None,
        )
        assert (plain.labels, plain.webhooks, plain.max_watch_s) == ({}, None, None)
        assert await store.save_polls([polled(w, "active", T0 + 1)]) == [True]
        await store.release([plain])
        plain2, w2 = await store.claim_due(T0 + 20, 10, LEASE)  # by due time
        assert (w2.status, w2.polls, w2.last_polled_at, w2.upstream_updated_at) == ("active", 1, T0 + 1, "u1")
        assert plain2.job_id == jid(2)


class TestSavePolls:
    """save_polls: fenced writes with outbox events and deliveries."""

    async def test_saves_state_events_and_deliveries(self, store: Store) -> None:
        """A transition writes the watch, one event, one delivery per webhook and re-indexes the watch."""
        await store.register([reg(1)], T0)
        w = await claim_one(store, T0)
        assert await store.save_polls([polled(w, "active", T0, hooks=("ops", "slack"))]) == [True]
        saved = await store.get_watch(jid(1))
        assert saved is not None
        assert (saved.status, saved.polls, saved.next_poll_at, saved.upstream_updated_at) == (
            "active",
            1,
            T0 + 10,
            "u1",
        )
        (ev,) = await store.events_for(jid(1))
        assert ev.type == "job.active" and ev.payload["data"]["previous_status"] is None
        ds = await store.claim_deliveries(T0, 10, LEASE)
        assert sorted(d.webhook for d in ds) == ["ops", "slack"]
        assert all(d.event == ev and d.attempts == 0 and d.next_attempt_at == T0 for d in ds)
        assert await store.next_due_at() == T0 + 10

    async def test_stale_lease_writes_nothing(self, store: Store) -> None:
        """A save with a lost lease returns False and leaves no trace."""
        await store.register([reg(1), reg(2)], T0)
        a, b = await store.claim_due(T0, 10, LEASE)
        stale = replace(a, lease=a.lease + 1000)
        res = await store.save_polls([polled(stale, "active", T0), polled(b, "queued", T0)])
        assert res == [False, True]
        untouched = await store.get_watch(a.job_id)
        assert untouched is not None and untouched.status is None and untouched.polls == 0
        assert await store.events_for(a.job_id) == []
        assert [d.event.job_id for d in await store.claim_deliveries(T0, 10, LEASE)] == [b.job_id]

    async def test_saved_lease_cannot_save_twice(self, store: Store) -> None:
        """A save releases the claim, so a second save with the same lease is fenced."""
        await store.register([reg(1)], T0)
        w = await claim_one(store, T0)
        assert await store.save_polls([polled(w, "active", T0)]) == [True]
        assert await store.save_polls([polled(w, "failed", T0)]) == [False]

    async def test_duplicate_event_is_skipped(self, store: Store) -> None:
        """The same event id saved twice yields one event and one set of deliveries."""
        await store.register([reg(1)], T0)
        w = await claim_one(store, T0)
        first = polled(w, "active", T0)
        assert await store.save_polls([first]) == [True]
        w2 = await claim_one(store, T0 + 10)
        again = SavedPoll(replace(w2, polls=2, next_poll_at=T0 + 20), first.events)
        assert await store.save_polls([again]) == [True]
        assert len(await store.events_for(jid(1))) == 1
        assert len(await store.claim_deliveries(T0 + 100, 10, LEASE)) == 1
        assert len(await store.list_deliveries()) == 1

    async def test_finished_never_claimed_again(self, store: Store) -> None:
        """A watch saved with a final state leaves the due index for good."""
        await store.register([reg(1)], T0)
        w = await claim_one(store, T0)
        assert await store.save_polls([polled(w, "failed", T0)]) == [True]
        assert await store.claim_due(T0 + 10**6, 10, LEASE) == []
        assert await store.next_due_at() is None
        assert await store.restore(T0, lambda _w: T0) == 0

    async def test_poll_keeps_sources_added_meanwhile(self, store: Store) -> None:
        """A registration during an in-flight poll is not overwritten by the save."""
        await store.register([reg(1, Source.FILE)], T0)
        w = await claim_one(store, T0)
        await store.register([reg(1, Source.API, labels={"x": "y"})], T0)
        await store.save_polls([polled(w, "active", T0)])
        saved = await store.get_watch(jid(1))
        assert saved is not None and saved.sources == Source.FILE | Source.API and saved.labels == {}


async def _two_events(store: Store, n: int = 1, hooks: tuple[str, ...] = ("ops",)) -> None:
    """Job `n` goes active then failed: two events for the same (job, webhook) pairs."""
    await store.register([reg(n)], T0)
    w = await claim_one(store, T0)
    await store.save_polls([polled(w, "active", T0, hooks=hooks, updated="u1")])
    w = await claim_one(store, T0 + 10)
    await store.save_polls([polled(w, "failed", T0 + 10, hooks=hooks, updated="u2")])


def _done(state: DeliveryState, at: float, attempts: int = 1) -> DeliveryUpdate:
    return DeliveryUpdate(
        state=state,
        attempts=attempts,
        next_attempt_at=at,
        last_error=None if state is DeliveryState.DELIVERED else "HTTP 500",
        delivered_at=at if state is DeliveryState.DELIVERED else None,
    )


class TestDeliveries:
    """claim_deliveries / finish_delivery / retry_delivery: ordered per pair, leased, fenced."""

    async def test_pair_order(self, store: Store) -> None:
        """A pair's second event waits until the first is delivered or dead; other pairs do not wait."""
        await _two_events(store, hooks=("ops", "slack"))
        first = await store.claim_deliveries(T0 + 20, 10, LEASE)
        assert [(d.webhook, d.event.type) for d in first] == [("ops", "job.active"), ("slack", "job.active")]
        ops, slack = first
        assert await store.finish_delivery(ops, _done(DeliveryState.DELIVERED, T0 + 21))
        (nxt,) = await store.claim_deliveries(T0 + 21, 10, LEASE)
        assert (nxt.webhook, nxt.event.type) == ("ops", "job.failed")
        assert await store.finish_delivery(nxt, _done(DeliveryState.DELIVERED, T0 + 22))
        # A retry scheduled later still blocks its pair; dead does not.
        assert await store.finish_delivery(slack, _done(DeliveryState.PENDING, T0 + 500))
        assert await store.claim_deliveries(T0 + 100, 10, LEASE) == []
        assert await store.next_delivery_at() == T0 + 500
        (slack2,) = await store.claim_deliveries(T0 + 500, 10, LEASE)
        assert await store.finish_delivery(slack2, _done(DeliveryState.DEAD, T0 + 500, attempts=2))
        (last,) = await store.claim_deliveries(T0 + 500, 10, LEASE)
        assert (last.webhook, last.event.type) == ("slack", "job.failed")

    async def test_order_and_limit_across_pairs(self, store: Store) -> None:
        """Eligible deliveries come out by (next_attempt_at, id), at most `limit`."""
        for n in (1, 2, 3):
            await store.register([reg(n)], T0 + n)
            w = await claim_one(store, T0 + n)
            await store.save_polls([polled(w, "active", T0 + n)])
        got = await store.claim_deliveries(T0 + 10, 2, LEASE)
        assert [d.event.job_id for d in got] == [jid(1), jid(2)]

    async def test_lease_and_fencing(self, store: Store) -> None:
        """A claimed delivery is not claimed again before its lease expires; the old holder is fenced."""
        await _two_events(store)
        (d1,) = await store.claim_deliveries(T0 + 20, 10, LEASE)
        assert await store.claim_deliveries(T0 + 20 + LEASE - 1, 10, LEASE) == []
        assert await store.next_delivery_at() == T0 + 20 + LEASE
        (d2,) = await store.claim_deliveries(T0 + 20 + LEASE, 10, LEASE)
        assert d2.id == d1.id and d2.lease != d1.lease
        assert not await store.finish_delivery(d1, _done(DeliveryState.DELIVERED, T0 + 60))
        assert await store.finish_delivery(d2, _done(DeliveryState.DELIVERED, T0 + 60))
        assert not await store.finish_delivery(d2, _done(DeliveryState.DELIVERED, T0 + 60))
        (done,) = await store.list_deliveries(state="delivered")
        assert (done.id, done.attempts, done.delivered_at, done.lease) == (d1.id, 1, T0 + 60, 0)

    async def test_retry_dead(self, store: Store) -> None:
        """A dead delivery goes back to pending with attempts reset and the same event."""
        await _two_events(store)
        d, *_ = await store.claim_deliveries(T0 + 20, 10, LEASE)
        assert not await store.retry_delivery(d.id, T0 + 30)  # pending, not dead
        await store.finish_delivery(d, _done(DeliveryState.DEAD, T0 + 20, attempts=5))
        assert not await store.retry_delivery(10_000, T0 + 30)
        assert await store.retry_delivery(d.id, T0 + 30)
        assert not await store.retry_delivery(d.id, T0 + 30)
        claimed = await store.claim_deliveries(T0 + 30, 10, LEASE)
        assert [(c.id, c.attempts, c.state, c.event.id) for c in claimed] == [
            (d.id, 0, DeliveryState.PENDING, d.event.id)
        ]

    async def test_list_deliveries(self, store: Store) -> None:
        """Newest first, filtered by state and webhook, limited."""
        await _two_events(store, hooks=("ops", "slack"))
        all_ = await store.list_deliveries()
        assert [d.id for d in all_] == sorted((d.id for d in all_), reverse=True) and len(all_) == 4
        assert {d.webhook for d in await store.list_deliveries(webhook="slack")} == {"slack"}
        assert len(await store.list_deliveries(state="pending", limit=3)) == 3
        assert await store.list_deliveries(state="dead") == []


class TestListAndCounts:
    """list_watches pagination and status filter; counts aggregates."""

    async def test_pagination_is_stable(self, store: Store) -> None:
        """Pages in id order cover every watch once, even when watches are added between pages."""
        await store.register([reg(n) for n in range(25, 0, -1)], T0)
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            page = await store.list_watches(limit=10, cursor=cursor)
            seen += [w.job_id for w in page.watches]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
            await store.register([reg(0)], T0)  # sorts before the cursor: must not shift later pages
        assert seen == [jid(n) for n in range(1, 26)]

    async def test_exact_last_page_has_no_cursor(self, store: Store) -> None:
        """A page that ends exactly at the last watch reports no next page."""
        await store.register([reg(n) for n in range(1, 5)], T0)
        page = await store.list_watches(limit=4)
        assert len(page.watches) == 4 and page.next_cursor is None

    async def test_status_filter_and_counts(self, store: Store) -> None:
        """status matches final for finished watches, status otherwise, "unknown" before a poll."""
        await store.register([reg(1), reg(2), reg(3), reg(4)], T0)
        w1, w2, w3 = await store.claim_due(T0, 3, LEASE)
        await store.save_polls([polled(w1, "active", T0), polled(w2, "success", T0)])
        expired = replace(w3, status="queued", final=FinalState.EXPIRED.value, finished_at=T0)
        ev = verdict_event(expired, FinalState.EXPIRED, T0, "max_watch_s")
        await store.save_polls([SavedPoll(expired, (NewEvent(ev, ("ops",)),))])

        async def ids(status: str) -> list[str]:
            return [w.job_id for w in (await store.list_watches(status=status)).watches]

        assert await ids("active") == [jid(1)]
        assert await ids("success") == [jid(2)]
        assert await ids("expired") == [jid(3)]
        assert await ids("unknown") == [jid(4)]
        assert await ids("queued") == []
        c = await store.counts()
        assert c.watched_by_status == {"active": 1, "unknown": 1}
        assert c.pending_by_webhook == {"ops": 3}
        assert c.dead_by_webhook == {}
        assert c.oldest_pending_created_at == T0
        (d, *_) = await store.claim_deliveries(T0, 10, LEASE)
        await store.finish_delivery(d, _done(DeliveryState.DEAD, T0))
        c = await store.counts()
        assert (c.pending_by_webhook, c.dead_by_webhook) == ({"ops": 2}, {"ops": 1})


class TestPurgeDeleteRestore:
    """purge_finished, delete_watch, restore and events_for."""

    async def test_purge_waits_for_pending_deliveries_and_leaves_nothing_behind(self, store: Store) -> None:
        """Old finished watches go with their events; one with a pending delivery stays, claimable, until
        the delivery is settled, and then goes whole: no event or delivery outlives its watch."""
        await _two_events(store, n=1)  # job 1: active (delivered below), failed (pending)
        (d,) = await store.claim_deliveries(T0 + 20, 10, LEASE)
        await store.finish_delivery(d, _done(DeliveryState.DELIVERED, T0 + 20))
        await store.register([reg(3)], T0 + 100)
        w3 = await claim_one(store, T0 + 100)
        await store.save_polls([polled(w3, "success", T0 + 100, hooks=())])  # finished too recently
        await store.register([reg(4)], T0)
        w4 = await claim_one(store, T0)
        await store.save_polls([polled(w4, "success", T0 + 1, hooks=())])  # finished, nothing to deliver
        await store.register([reg(2)], T0)  # unfinished: never purged
        assert await store.purge_finished(T0 + 50) == 1  # job 4; job 1 still has a pending delivery
        assert await store.get_watch(jid(4)) is None and await store.events_for(jid(4)) == []
        assert await store.get_watch(jid(1)) is not None
        assert [e.type for e in await store.events_for(jid(1))] == ["job.active", "job.failed"]
        (pending,) = await store.claim_deliveries(T0 + 200, 10, LEASE)
        assert pending.event.type == "job.failed"
        assert await store.finish_delivery(pending, _done(DeliveryState.DELIVERED, T0 + 200))
        assert await store.purge_finished(T0 + 1000) == 2  # job 1, settled now, and job 3
        assert await store.get_watch(jid(1)) is None and await store.events_for(jid(1)) == []
        assert await store.list_deliveries(limit=10) == []
        assert await store.get_watch(jid(2)) is not None

    async def test_delete_watch(self, store: Store) -> None:
        """Delete forgets the watch and its claim but keeps undelivered deliveries."""
        await _two_events(store)  # job 1 is finished; add an unfinished, claimed one
        await store.register([reg(2)], T0)
        w2 = await claim_one(store, T0)
        assert await store.delete_watch(jid(2))
        assert await store.save_polls([polled(w2, "active", T0)]) == [False]
        assert await store.get_watch(jid(2)) is None
        assert await store.claim_due(T0 + 10**6, 10, LEASE) == []
        assert not await store.delete_watch(jid(2))
        assert await store.delete_watch(jid(1))
        assert len(await store.events_for(jid(1))) == 2
        assert [d.event.type for d in await store.claim_deliveries(T0 + 20, 10, LEASE)] == ["job.active"]

    async def test_restore_sets_first_due(self, store: Store) -> None:
        """restore re-indexes every unfinished watch at the time first_due gives it."""
        await store.register([reg(1), reg(2)], T0)
        (w,) = await store.claim_due(T0, 1, LEASE)  # a claim does not survive a single-process restore
        due = {jid(1): T0 + 7, jid(2): T0 + 3}
        assert await store.restore(T0, lambda x: due[x.job_id]) == 2
        assert await store.next_due_at() == T0 + 3
        if getattr(store, "shared", False):
            # Shared by replicas (PostgreSQL in production): the claim may be another replica's, so a
            # restore leaves it alone, and its holder's save still counts.
            assert await store.save_polls([polled(w, "active", T0)]) == [True]
            got = await store.claim_due(T0 + 7, 10, LEASE)
            assert [(x.job_id, x.next_poll_at) for x in got] == [(jid(2), T0 + 3)]
            return
        assert await store.save_polls([polled(w, "active", T0)]) == [False]
        got = await store.claim_due(T0 + 7, 10, LEASE)
        assert [(x.job_id, x.next_poll_at) for x in got] == [(jid(2), T0 + 3), (jid(1), T0 + 7)]

    async def test_events_in_order(self, store: Store) -> None:
        """events_for lists a job's events in the order they happened, and only that job's."""
        await _two_events(store, n=1)
        await _two_events(store, n=2)
        assert [e.type for e in await store.events_for(jid(1))] == ["job.active", "job.failed"]
        assert {e.job_id for e in await store.events_for(jid(2))} == {jid(2)}
        assert await store.events_for(jid(9)) == []


class TestWorkspaceFilters:
    """list_watches and list_deliveries keep only the given workspaces (an API client's, SPEC §14)."""

    async def test_lists_by_workspace(self, store: Store) -> None:
        """Watches and deliveries of `beta` only, of both, or of a workspace nobody uses."""
        await store.register([reg(1), replace(reg(2), workspace="beta")], T0)
        for w in await store.claim_due(T0, 10, LEASE):
            assert await store.save_polls([polled(w, "active", T0)]) == [True]
        page = await store.list_watches(workspaces=["beta"])
        assert [w.job_id for w in page.watches] == [jid(2)]
        assert len((await store.list_watches(workspaces=["acme", "beta"])).watches) == 2
        assert (await store.list_watches(workspaces=["gamma"])).watches == []
        assert [d.event.job_id for d in await store.list_deliveries(workspaces=["beta"])] == [jid(2)]
        assert len(await store.list_deliveries(workspaces=["acme", "beta"])) == 2
        assert await store.list_deliveries(workspaces=["gamma"]) == []
