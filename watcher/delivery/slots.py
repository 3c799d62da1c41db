"""Per-endpoint concurrency budgets (issue 14): how many deliveries to each endpoint are in flight, and the
claimed ones that wait for a slot of their endpoint.

An endpoint (a webhook, or a callback's `scheme://host:port`) never has more than its `concurrency`
deliveries in flight, within the worker's global concurrency. An endpoint at its budget is left out of
claims; what one claim brought beyond an endpoint's free slots waits here, leased, and goes out as that
endpoint's sends finish, so a receiver that hangs holds its own slots and nothing else.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class Waiting(Generic[T]):
    """A claimed delivery waiting for a slot of its endpoint, and when it was claimed."""

    item: T
    claimed_at: float


class EndpointSlots(Generic[T]):
    """In-flight counts and waiting queues per endpoint."""

    def __init__(self) -> None:
        self._busy: Counter[str] = Counter()
        self._budget: dict[str, int] = {}
        self._waiting: dict[str, deque[Waiting[T]]] = {}

    def full(self, endpoint: str, budget: int) -> bool:
        """True if `endpoint` has no free slot (its budget is `budget`)."""
        self._budget[endpoint] = budget
        return self._busy[endpoint] >= budget

    def excluded(self) -> set[str]:
        """Endpoints at their budget: claims leave them out."""
        return {e for e, n in self._busy.items() if n >= self._budget.get(e, 1)}

    def take(self, endpoint: str) -> None:
        """One more delivery to `endpoint` in flight."""
        self._busy[endpoint] += 1

    def wait(self, endpoint: str, item: T, claimed_at: float) -> None:
        """Keep a claimed delivery until `endpoint` has a free slot."""
        self._waiting.setdefault(endpoint, deque()).append(Waiting(item, claimed_at))

    def done(self, endpoint: str) -> Waiting[T] | None:
        """A delivery to `endpoint` finished: the next one waiting for it (its slot is taken), if any."""
        queue = self._waiting.get(endpoint)
        if queue:
            nxt = queue.popleft()
            if not queue:
                del self._waiting[endpoint]
            return nxt
        self._busy[endpoint] -= 1
        if self._busy[endpoint] <= 0:
            del self._busy[endpoint]
        return None

    def drop_waiting(self) -> int:
        """Forget every waiting delivery (a stop: they stay leased in the store); how many there were."""
        count = sum(len(q) for q in self._waiting.values())
        self._waiting.clear()
        return count
