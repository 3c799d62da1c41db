"""The in-memory store's grouped claims (`group_window_s`, SPEC §15). A mixin of `MemoryStore`, which owns
the dicts, the pair heads and the lease tokens."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

from watcher.models import Delivery, DeliveryUpdate
from watcher.store.base import GroupClaim, GroupKey, GroupPlan, Store, pick_group


class MemoryGroups(Store):
    """`claim_group` and `finish_group` of `MemoryStore`."""

    _lease_until: dict[int, float]
    _delivery_tokens: itertools.count[int]

    def _heads(self) -> list[Delivery]:
        raise NotImplementedError  # `MemoryStore`'s

    def _open(self, endpoint: str, now: float) -> bool:
        raise NotImplementedError  # `MemoryHealth`'s

    def _claimable_heads(self, webhook: str, now: float) -> list[Delivery]:
        """`webhook`'s due, unleased pair heads, oldest first; none while its endpoint is open."""
        if self._open(webhook, now):
            return []
        ready = [
            d
            for d in self._heads()
            if d.webhook == webhook
            and d.next_attempt_at <= now
            and self._lease_until.get(d.id, float("-inf")) <= now
        ]
        return sorted(ready, key=lambda d: (d.next_attempt_at, d.id))

    async def claim_group(
        self, webhook: str, now: float, window_s: float, limit: int, lease_s: float
    ) -> GroupClaim:
        """Pick the group among the heads (`pick_group`) and lease its members with one token."""
        heads = self._claimable_heads(webhook, now)
        retried = next(((d.attempts, d.next_attempt_at) for d in heads if d.attempts > 0), None)
        fresh = min((d.next_attempt_at for d in heads if d.attempts == 0), default=None)
        key = pick_group(GroupPlan(retried, fresh), now, window_s)
        if not isinstance(key, GroupKey):
            return GroupClaim([], key)
        chosen = [
            d for d in heads if d.attempts == key.attempts and (key.at is None or d.next_attempt_at == key.at)
        ]
        token = next(self._delivery_tokens)
        out = []
        for d in chosen[: max(0, limit)]:
            d.lease = token
            self._lease_until[d.id] = now + lease_s
            out.append(replace(d))
        return GroupClaim(out)

    async def finish_group(self, members: Sequence[Delivery], update: DeliveryUpdate) -> int:
        """`finish_delivery` for each member."""
        kept = 0
        for d in members:
            kept += await self.finish_delivery(d, update)
        return kept
