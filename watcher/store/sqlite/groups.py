"""The SQLite store's grouped claims (`group_window_s`, SPEC §15): one webhook's pair heads claimed under
one lease, and one attempt's outcome written to all of them. A mixin of `SQLiteStore`; everything runs on
the aiosqlite connection under the store's write lock, so a plan and its claim see the same rows."""

from __future__ import annotations

from collections.abc import Sequence

from watcher.models import Delivery, DeliveryUpdate
from watcher.store.base import GroupClaim, GroupKey, GroupPlan, pick_group
from watcher.store.sql import ENDPOINT_NOT_OPEN, PAIR_HEAD
from watcher.store.sqlite.connection import select
from watcher.store.sqlite.outbox import SQLiteOutbox
from watcher.store.sqlite.sql import DELIVERY_SELECT, chunks, marks

# `webhook`'s due, unleased pair heads; parameters: webhook, now, now, now. The pending-age index narrows
# the rows to the webhook's pending ones.
_HEADS = (
    "d.webhook = ? AND d.state = 'pending' AND d.next_attempt_at <= ?"
    " AND (d.lease_until IS NULL OR d.lease_until <= ?)"
    f" AND {PAIR_HEAD} AND {ENDPOINT_NOT_OPEN.format(now='?')}"
)
_PLAN_RETRY = (
    f"SELECT d.attempts, d.next_attempt_at FROM deliveries d WHERE {_HEADS} AND d.attempts > 0"  # noqa: S608
    " ORDER BY d.next_attempt_at, d.id LIMIT 1"
)
_PLAN_FRESH = f"SELECT min(d.next_attempt_at) FROM deliveries d WHERE {_HEADS} AND d.attempts = 0"  # noqa: S608
# Then: attempts, at, at, limit.
_GROUP = (
    f"{DELIVERY_SELECT} WHERE {_HEADS} AND d.attempts = ? AND (? IS NULL OR d.next_attempt_at = ?)"
    " ORDER BY d.next_attempt_at, d.id LIMIT ?"
)
_FINISH_GROUP = (
    "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?,"
    " delivered_at = ?, lease = NULL, lease_until = NULL"
    " WHERE state = 'pending' AND lease = ? AND id IN ({ids})"
)


class SQLiteGroups(SQLiteOutbox):
    """`claim_group` and `finish_group` of `SQLiteStore`, which owns the connections and the lease tokens;
    a group is leased as `SQLiteOutbox` leases what it claims."""

    async def claim_group(
        self, webhook: str, now: float, window_s: float, limit: int, lease_s: float
    ) -> GroupClaim:
        """Plan (`pick_group`), select the members and lease them, in one write transaction."""
        heads = (webhook, now, now, now)
        async with self.connections.write() as db:
            retried = await select(db, _PLAN_RETRY, heads)
            fresh = await select(db, _PLAN_FRESH, heads)
            plan = GroupPlan((retried[0][0], retried[0][1]) if retried else None, fresh[0][0])
            key = pick_group(plan, now, window_s)
            if not isinstance(key, GroupKey) or limit <= 0:
                return GroupClaim([], key if not isinstance(key, GroupKey) else None)
            rows = await select(db, _GROUP, (*heads, key.attempts, key.at, key.at, limit))
            return GroupClaim(await self._lease_rows(db, rows, now, lease_s))

    async def finish_group(self, members: Sequence[Delivery], update: DeliveryUpdate) -> int:
        """One UPDATE per lease and chunk of ids, all in one write transaction."""
        u = update
        row = (u.state.value, u.attempts, u.next_attempt_at, u.last_error, u.delivered_at)
        by_lease: dict[int, list[int]] = {}
        for d in members:
            by_lease.setdefault(d.lease, []).append(d.id)
        kept = 0
        async with self.connections.write() as db:
            for lease, ids in by_lease.items():
                for chunk in chunks(ids):
                    sql = _FINISH_GROUP.format(ids=marks(len(chunk)))
                    cur = await db.execute(sql, (*row, lease, *chunk))
                    kept += cur.rowcount
        return kept
