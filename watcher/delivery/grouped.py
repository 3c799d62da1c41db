"""Grouped webhooks (`group_window_s`, SPEC §15): claiming a webhook's waiting events as one message.

The store decides which deliveries form a group (`Store.claim_group`: a tumbling window that opens at the
first waiting event, or the members of a group that failed together); the worker sends the group as one
`Delivery`, its first member standing for the rest with every member in its `group`, so the breaker, the
endpoint's slots, the retry policy and the lease treat it as one message. Its outcome is written to every
member at once (`Store.finish_group`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from typing import Final

from watcher.delivery.target import WebhookTarget
from watcher.models import Delivery
from watcher.store.base import Store

# The most members one message takes; more waiting go in the next message at once. A message lists ten and
# counts the rest in at most twenty lines, so its size does not grow with this.
GROUP_LIMIT: Final = 1000


def grouped(targets: Iterable[WebhookTarget]) -> list[WebhookTarget]:
    """The targets that group their events."""
    return [t for t in targets if t.group_window_s > 0]


def as_message(members: list[Delivery]) -> Delivery:
    """One message of `members` (at least one, oldest first): the first stands for all of them."""
    return replace(members[0], group=tuple(members))


def split(message: Delivery, keep: Callable[[Delivery], bool]) -> tuple[Delivery | None, Delivery | None]:
    """A grouped message cut in two: the members `keep` says yes to, and the others (None: no such member)."""
    yes = [m for m in message.group if keep(m)]
    no = [m for m in message.group if not keep(m)]
    return (as_message(yes) if yes else None), (as_message(no) if no else None)


async def claim_groups(
    store: Store,
    targets: Iterable[WebhookTarget],
    skip: Collection[str],
    now: float,
    lease_s: float,
    room: int,
) -> tuple[list[Delivery], float | None]:
    """At most one message per grouped target not in `skip` (its breaker is open or its slots are busy) and
    at most `room` in all; and the earliest time a window that is still open closes (None: none is)."""
    messages: list[Delivery] = []
    closes: float | None = None
    for target in targets:
        if len(messages) >= room:
            break
        if target.name in skip:
            continue
        claim = await store.claim_group(target.name, now, target.group_window_s, GROUP_LIMIT, lease_s)
        if claim.members:
            messages.append(as_message(claim.members))
        elif claim.window_closes_at is not None:
            at = claim.window_closes_at
            closes = at if closes is None else min(closes, at)
    return messages, closes
