"""The in-memory store's endpoint health: breakers in a dict, compare-and-set on their version, and the
`max_delivery_age_s` sweep (SPEC §13). A mixin of `MemoryStore`, which owns the dicts."""

from __future__ import annotations

from dataclasses import replace

from watcher.models import BreakerState, Delivery, DeliveryState, EndpointHealth
from watcher.store.base import Store


class MemoryHealth(Store):
    """Breakers and the age sweep of `MemoryStore`."""

    _endpoints: dict[str, EndpointHealth]
    _deliveries: dict[int, Delivery]
    _lease_until: dict[int, float]

    def _open(self, endpoint: str, now: float) -> bool:
        """True while `endpoint`'s breaker is open or its probe's lease runs (claims leave it out)."""
        h = self._endpoints.get(endpoint)
        return (
            h is not None
            and h.state is not BreakerState.CLOSED
            and h.open_until is not None
            and h.open_until > now
        )

    async def endpoints(self) -> list[EndpointHealth]:
        """Every breaker, by endpoint."""
        return [self._endpoints[k] for k in sorted(self._endpoints)]

    async def put_endpoint(self, health: EndpointHealth) -> bool:
        """Compare-and-set on the version."""
        stored = self._endpoints.get(health.endpoint)
        if (0 if stored is None else stored.version) != health.version:
            return False
        self._endpoints[health.endpoint] = replace(health, version=health.version + 1)
        return True

    async def expire_deliveries(self, webhook: str, created_before: float, reason: str) -> int:
        """Unleased pending deliveries of `webhook` older than the cut-off become dead."""
        count = 0
        for d in self._deliveries.values():
            if (
                d.webhook == webhook
                and d.state is DeliveryState.PENDING
                and d.created_at < created_before
                and d.id not in self._lease_until
            ):
                d.state = DeliveryState.DEAD
                d.last_error = reason
                count += 1
        return count
