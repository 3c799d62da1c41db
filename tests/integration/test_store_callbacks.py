"""The store contract for callbacks (SPEC §13), run against every `Store` implementation."""

from __future__ import annotations

from dataclasses import replace

from tests.integration.test_store_contract import LEASE, T0, claim_one, jid, polled, reg
from watcher.models import CALLBACK, BreakerState, Callback, DeliveryState, EndpointHealth
from watcher.store.base import Store

CB = Callback("https://hooks.example.com:8443/job?t=1", ("job.failed",), {"Authorization": "Bearer s3cr3t"})


class TestCallbackStorage:
    """A watch keeps its callback; each callback delivery carries its own copy."""

    async def test_watch_keeps_its_callback(self, store: Store) -> None:
        """Registered with a callback: get, list and claim return it as given; others have none."""
        await store.register([reg(1, callback=CB), reg(2)], T0)
        w1, w2 = await store.get_watch(jid(1)), await store.get_watch(jid(2))
        assert w1 is not None and w2 is not None
        assert (w1.callback, w2.callback) == (CB, None)
        page = await store.list_watches()
        assert [w.callback for w in page.watches] == [CB, None]
        claimed = {w.job_id: w for w in await store.claim_due(T0, 10, LEASE)}
        assert claimed[jid(1)].callback == CB

    async def test_a_second_registration_does_not_change_it(self, store: Store) -> None:
        """The store never replaces a callback (the API answers 409 to a different one)."""
        await store.register([reg(1, callback=CB)], T0)
        await store.register([reg(1, callback=Callback("https://other.example/"))], T0 + 1)
        await store.register([reg(1)], T0 + 2)
        w = await store.get_watch(jid(1))
        assert w is not None and w.callback == CB

    async def test_callback_delivery_carries_the_callback_after_delete(self, store: Store) -> None:
        """The delivery routed to `callback` carries the watch's callback, still after the watch is gone."""
        await store.register([reg(1, callback=CB)], T0)
        w = await claim_one(store, T0)
        assert await store.save_polls([polled(w, "failed", T0 + 1, hooks=("ops", CALLBACK))]) == [True]
        assert await store.delete_watch(jid(1))
        claimed = {d.webhook: d for d in await store.claim_deliveries(T0 + 2, 10, LEASE)}
        assert set(claimed) == {"ops", CALLBACK}
        assert claimed[CALLBACK].callback == CB
        assert claimed["ops"].callback is None
        assert claimed[CALLBACK].state is DeliveryState.PENDING
        listed = await store.list_deliveries(webhook=CALLBACK)
        assert [d.callback for d in listed] == [CB]


class TestEndpointHealth:
    """Breakers: compare-and-set on their version; claims leave excluded endpoints alone; the age sweep."""

    async def test_compare_and_set(self, store: Store) -> None:
        """One insert wins; an update of a stale version is refused, so only one replica takes a probe."""
        h = EndpointHealth("ops", "ops", BreakerState.OPEN, 5, T0 + 10, 10.0, "HTTP 503")
        assert await store.put_endpoint(h)
        assert not await store.put_endpoint(h)  # already inserted
        (stored,) = await store.endpoints()
        assert stored == replace(h, version=1)
        probe = replace(stored, state=BreakerState.HALF_OPEN, open_until=T0 + 70)
        assert await store.put_endpoint(probe)
        assert not await store.put_endpoint(replace(stored, state=BreakerState.HALF_OPEN))  # the other one
        (now,) = await store.endpoints()
        assert (now.state, now.open_until, now.version) == (BreakerState.HALF_OPEN, T0 + 70, 2)

    async def test_claim_excludes_endpoints(self, store: Store) -> None:
        """Deliveries to an excluded webhook or callback endpoint stay; the others are claimed."""
        await store.register([reg(1, callback=CB)], T0)
        w = await claim_one(store, T0)
        assert await store.save_polls([polled(w, "failed", T0 + 1, hooks=("ops", "audit", CALLBACK))])
        got = await store.claim_deliveries(T0 + 2, 10, LEASE, exclude={"ops", CB.endpoint})
        assert [d.webhook for d in got] == ["audit"]
        assert CB.endpoint == "https://hooks.example.com:8443"
        got = await store.claim_deliveries(T0 + 2, 10, LEASE, exclude={"ops"})
        assert [(d.webhook, d.endpoint) for d in got] == [(CALLBACK, CB.endpoint)]

    async def test_expire_old_deliveries(self, store: Store) -> None:
        """Pending deliveries of one webhook older than the cut-off become dead; leased ones stay."""
        await store.register([reg(1), reg(2)], T0)
        ws = await store.claim_due(T0, 10, LEASE)
        assert await store.save_polls([polled(w, "failed", T0 + 1, hooks=("ops", "audit")) for w in ws])
        (leased,) = await store.claim_deliveries(T0 + 2, 1, LEASE)
        n = await store.expire_deliveries(leased.webhook, T0 + 5, "max_age: undelivered after 4 s")
        assert n == 1
        dead = await store.list_deliveries(state="dead")
        assert [(d.webhook, d.last_error) for d in dead] == [
            (leased.webhook, "max_age: undelivered after 4 s")
        ]
        assert await store.expire_deliveries("audit", T0, "x") == 0

    async def test_claims_respect_an_open_breaker_in_the_store(self, store: Store) -> None:
        """Whoever opened it, a stored open breaker keeps its endpoint's deliveries unclaimed until its
        period (or its probe's lease) ends; a closed one does not."""
        await store.register([reg(1)], T0)
        w = await claim_one(store, T0)
        assert await store.save_polls([polled(w, "failed", T0 + 1, hooks=("ops", "audit"))])
        assert await store.put_endpoint(EndpointHealth("ops", "ops", BreakerState.OPEN, 5, T0 + 50, 40.0))
        assert await store.put_endpoint(EndpointHealth("audit", "audit", BreakerState.CLOSED, 2))
        got = await store.claim_deliveries(T0 + 10, 10, LEASE)
        assert [d.webhook for d in got] == ["audit"]
        assert "ops" not in [d.webhook for d in await store.claim_deliveries(T0 + 49, 10, LEASE)]
        assert "ops" in [d.webhook for d in await store.claim_deliveries(T0 + 50, 10, LEASE)]
