"""The PostgreSQL store's grouped claims (`group_window_s`, SPEC §15): one webhook's pair heads claimed under
one lease, and one attempt's outcome written to all of them. A mixin of `PostgresStore`, which owns the pool
and the clock conventions (`_now`, `_at`).

As with single claims, the due time doubles as the lease expiry, so a crashed replica's group becomes due
again by itself: its members keep their attempt count and share that due time, and are claimed together
again. Two replicas planning the same webhook at once may each take part of the heads (`SKIP LOCKED`): two
messages, nothing sent twice and nothing lost.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from watcher.clock import Clock
from watcher.models import Delivery, DeliveryUpdate
from watcher.store.base import GroupClaim, GroupKey, GroupPlan, Store, pick_group
from watcher.store.postgres import sql as q
from watcher.store.postgres.conn import PgPool
from watcher.store.sql import ENDPOINT_NOT_OPEN, PAIR_HEAD

_NOW = f"coalesce($2::float8, {q.NOW})"
# `$1`'s due, unleased pair heads at `$2` (NULL: the database's now).
_HEADS = f"""d.webhook = $1 AND d.state = 'pending' AND d.next_attempt_at <= {_NOW} AND {PAIR_HEAD}
      AND {ENDPOINT_NOT_OPEN.format(now=_NOW)}"""
_PLAN_RETRY = f"""
SELECT d.attempts, d.next_attempt_at FROM deliveries d WHERE {_HEADS} AND d.attempts > 0
ORDER BY d.next_attempt_at, d.id LIMIT 1"""  # noqa: S608
_PLAN_FRESH = f"""
SELECT (SELECT min(d.next_attempt_at) FROM deliveries d WHERE {_HEADS} AND d.attempts = 0) AS fresh,
    {_NOW} AS now"""  # noqa: S608
# Then `$3` attempts, `$4` the shared due time (NULL: any due one), `$5` limit, `$6` lease_s.
_CLAIM_GROUP = q.lease_deliveries(
    f"{_HEADS} AND d.attempts = $3 AND ($4::float8 IS NULL OR d.next_attempt_at = $4::float8)",
    "$5",
    f"{_NOW} + $6::float8",
)
_FINISH_GROUP = f"""
UPDATE deliveries SET state = $1, attempts = $2, next_attempt_at = coalesce($3::float8, {q.NOW}) + $4::float8,
    last_error = $5, delivered_at = $6, lease = NULL
WHERE id = ANY($7::bigint[]) AND state = 'pending' AND lease = $8
RETURNING id"""  # noqa: S608


class PgGroups(Store):
    """`claim_group` and `finish_group` of `PostgresStore`."""

    pool: PgPool
    _clock: Clock

    def _now(self, now: float) -> float | None:
        raise NotImplementedError  # `PostgresStore`'s

    def _at(self, when: float) -> tuple[float | None, float]:
        raise NotImplementedError  # `PostgresStore`'s

    async def claim_group(
        self, webhook: str, now: float, window_s: float, limit: int, lease_s: float
    ) -> GroupClaim:
        """Plan (`pick_group`, on the database's clock when shared) and claim, in one transaction."""
        at = self._now(now)

        async def work(conn: asyncpg.Connection) -> GroupClaim:
            retried = await conn.fetchrow(_PLAN_RETRY, webhook, at)
            fresh = await conn.fetchrow(_PLAN_FRESH, webhook, at)
            db_now = float(fresh["now"])
            plan = GroupPlan(
                None if retried is None else (retried["attempts"], retried["next_attempt_at"]), fresh["fresh"]
            )
            key = pick_group(plan, db_now, window_s)
            if not isinstance(key, GroupKey):
                # A window's end on the database's clock, as this replica's time.
                return GroupClaim([], None if key is None else now + (key - db_now))
            if limit <= 0:
                return GroupClaim([])
            rows = await conn.fetch(_CLAIM_GROUP, webhook, at, key.attempts, key.at, limit, lease_s)
            members = []
            for r in sorted(rows, key=lambda r: (r["due"], r["id"])):
                d = q.delivery_row(r)
                d.next_attempt_at = r["due"]
                members.append(d)
            return GroupClaim(members)

        return await self.pool.run(work)

    async def finish_group(self, members: Sequence[Delivery], update: DeliveryUpdate) -> int:
        """One UPDATE per lease (a group has one), fenced like `finish_delivery`."""
        base, offset = self._at(update.next_attempt_at)
        args = (update.state.value, update.attempts, base, offset, update.last_error, update.delivered_at)
        by_lease: dict[int, list[int]] = {}
        for d in members:
            by_lease.setdefault(d.lease, []).append(d.id)

        async def work(conn: asyncpg.Connection) -> int:
            kept = 0
            for lease, ids in by_lease.items():
                kept += len(await conn.fetch(_FINISH_GROUP, *args, ids, lease))
            return kept

        return await self.pool.run(work)
