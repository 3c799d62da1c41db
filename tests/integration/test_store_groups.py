"""The store contract of grouped claims (`group_window_s`, SPEC §15), run against every `Store`: a webhook's
waiting pair heads claimed together once their window closes, one outcome written to all of them, a group
that failed claimed together again, a lost lease fenced, and the per-(job, webhook) order kept."""

from __future__ import annotations

from tests.integration.test_store_contract import LEASE, T0, claim_one, jid, polled, reg
from watcher.models import Delivery, DeliveryState, DeliveryUpdate
from watcher.store.base import Store

WINDOW = 10.0
LIMIT = 1000


async def fail_jobs(store: Store, ns: range | list[int], hooks: tuple[str, ...] = ("chat", "ops")) -> None:
    """Each job `n` of `ns` is registered and polled `failed` at `T0 + n` (its event is that old)."""
    for n in ns:
        await store.register([reg(n)], T0 + n)
        w = await claim_one(store, T0 + n)
        await store.save_polls([polled(w, "failed", T0 + n, hooks=hooks)])


def update(
    state: DeliveryState, at: float, attempts: int = 1, error: str | None = "HTTP 500"
) -> DeliveryUpdate:
    return DeliveryUpdate(
        state,
        attempts,
        at,
        None if state is DeliveryState.DELIVERED else error,
        delivered_at=at if state is DeliveryState.DELIVERED else None,
    )


def jobs(members: list[Delivery]) -> list[str]:
    return [d.event.job_id for d in members]


class TestWindow:
    async def test_window_opens_at_the_first_waiting_event(self, store: Store) -> None:
        """Nothing is claimed before the window (opened by the oldest head) closes; then all waiting heads
        of the webhook go in one claim under one lease, oldest first, and no other webhook's."""
        await fail_jobs(store, [1, 2, 3])
        early = await store.claim_group("chat", T0 + 5, WINDOW, LIMIT, LEASE)
        assert early.members == []
        assert early.window_closes_at is not None
        assert abs(early.window_closes_at - (T0 + 1 + WINDOW)) < 0.5
        group = await store.claim_group("chat", T0 + 12, WINDOW, LIMIT, LEASE)
        assert jobs(group.members) == [jid(1), jid(2), jid(3)]
        assert {d.webhook for d in group.members} == {"chat"}
        assert len({d.lease for d in group.members}) == 1 and group.members[0].lease != 0
        assert all(d.attempts == 0 and d.state is DeliveryState.PENDING for d in group.members)
        # Claimed: neither another group claim nor a plain claim hands them out again.
        again = await store.claim_group("chat", T0 + 12, WINDOW, LIMIT, LEASE)
        assert again.members == [] and again.window_closes_at is None
        plain = await store.claim_deliveries(T0 + 12, 100, LEASE, exclude=("chat",))
        assert sorted(jobs(plain)) == [jid(1), jid(2), jid(3)] and {d.webhook for d in plain} == {"ops"}

    async def test_nothing_waiting(self, store: Store) -> None:
        got = await store.claim_group("chat", T0, WINDOW, LIMIT, LEASE)
        assert got.members == [] and got.window_closes_at is None

    async def test_limit_leaves_the_rest_for_the_next_claim(self, store: Store) -> None:
        """Past `limit`, the rest wait for the next claim, which takes them at once (their window closed)."""
        await fail_jobs(store, range(1, 6), hooks=("chat",))
        first = await store.claim_group("chat", T0 + 20, WINDOW, 2, LEASE)
        rest = await store.claim_group("chat", T0 + 20, WINDOW, 2, LEASE)
        last = await store.claim_group("chat", T0 + 20, WINDOW, 2, LEASE)
        assert [jobs(first.members), jobs(rest.members), jobs(last.members)] == [
            [jid(1), jid(2)],
            [jid(3), jid(4)],
            [jid(5)],
        ]


class TestOutcome:
    async def test_delivered_together(self, store: Store) -> None:
        await fail_jobs(store, [1, 2, 3], hooks=("chat",))
        group = await store.claim_group("chat", T0 + 20, WINDOW, LIMIT, LEASE)
        kept = await store.finish_group(group.members, update(DeliveryState.DELIVERED, T0 + 21))
        assert kept == 3
        done = await store.list_deliveries(state="delivered")
        assert sorted(jobs(done)) == [jid(1), jid(2), jid(3)]
        assert {(d.attempts, d.delivered_at, d.lease) for d in done} == {(1, T0 + 21, 0)}

    async def test_dead_together(self, store: Store) -> None:
        await fail_jobs(store, [1, 2], hooks=("chat",))
        group = await store.claim_group("chat", T0 + 20, WINDOW, LIMIT, LEASE)
        kept = await store.finish_group(
            group.members, update(DeliveryState.DEAD, T0 + 21, 5, "HTTP 410 Gone")
        )
        assert kept == 2
        dead = await store.list_deliveries(state="dead")
        assert {(d.attempts, d.last_error) for d in dead} == {(5, "HTTP 410 Gone")} and len(dead) == 2

    async def test_retried_together_apart_from_newcomers(self, store: Store) -> None:
        """A group that failed is claimed again as the same members when its retry is due; what failed
        meanwhile waits in a window of its own."""
        await fail_jobs(store, [1, 2, 3], hooks=("chat",))
        group = await store.claim_group("chat", T0 + 20, WINDOW, LIMIT, LEASE)
        assert await store.finish_group(group.members, update(DeliveryState.PENDING, T0 + 100)) == 3
        await fail_jobs(store, [50], hooks=("chat",))
        assert (await store.claim_group("chat", T0 + 55, WINDOW, LIMIT, LEASE)).members == []
        newcomer = await store.claim_group("chat", T0 + 61, WINDOW, LIMIT, LEASE)
        assert jobs(newcomer.members) == [jid(50)]
        retried = await store.claim_group("chat", T0 + 100, WINDOW, LIMIT, LEASE)
        assert sorted(d.id for d in retried.members) == sorted(d.id for d in group.members)
        assert {(d.attempts, d.last_error) for d in retried.members} == {(1, "HTTP 500")}


class TestLeases:
    async def test_lost_lease_claims_the_group_again_and_fences_the_old_holder(self, store: Store) -> None:
        """A group whose holder died is claimed again, whole, once its lease runs out; the old holder's
        late outcome writes nothing."""
        await fail_jobs(store, [1, 2, 3], hooks=("chat",))
        first = await store.claim_group("chat", T0 + 20, WINDOW, LIMIT, LEASE)
        assert (await store.claim_group("chat", T0 + 20 + LEASE - 1, WINDOW, LIMIT, LEASE)).members == []
        # After the lease a fresh group's window opens again (at the latest when the lease ended).
        later = T0 + 20 + LEASE + WINDOW + 1
        second = await store.claim_group("chat", later, WINDOW, LIMIT, LEASE)
        assert sorted(d.id for d in second.members) == sorted(d.id for d in first.members)
        assert await store.finish_group(first.members, update(DeliveryState.DELIVERED, later)) == 0
        assert await store.finish_group(second.members, update(DeliveryState.DELIVERED, later)) == 3

    async def test_pair_order(self, store: Store) -> None:
        """A job's later event never joins a group while its earlier one is pending."""
        await store.register([reg(1)], T0)
        w = await claim_one(store, T0)
        await store.save_polls([polled(w, "active", T0, hooks=("chat",), updated="u1")])
        w = await claim_one(store, T0 + 10)
        await store.save_polls([polled(w, "failed", T0 + 10, hooks=("chat",), updated="u2")])
        await fail_jobs(store, [2], hooks=("chat",))
        group = await store.claim_group("chat", T0 + 20, WINDOW, LIMIT, LEASE)
        assert [(d.event.job_id, d.event.type) for d in group.members] == [
            (jid(1), "job.active"),
            (jid(2), "job.failed"),
        ]
        assert await store.finish_group(group.members, update(DeliveryState.PENDING, T0 + 200)) == 2
        # Retrying: job 1's failure still waits behind its activation.
        assert (await store.claim_group("chat", T0 + 100, WINDOW, LIMIT, LEASE)).members == []
        retried = await store.claim_group("chat", T0 + 200, WINDOW, LIMIT, LEASE)
        assert await store.finish_group(retried.members, update(DeliveryState.DELIVERED, T0 + 201, 2)) == 2
        (nxt,) = (await store.claim_group("chat", T0 + 201, WINDOW, LIMIT, LEASE)).members
        assert (nxt.event.job_id, nxt.event.type) == (jid(1), "job.failed")
