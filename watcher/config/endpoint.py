"""The keys every delivery endpoint shares (SPEC §13, issue 14): its circuit breaker, how long an event may
wait for it, and how many deliveries to it may be in flight at once. Each `[[webhooks]]` table and the
`[callbacks]` section take them."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, Field, model_validator

from watcher.config.fields import PositiveSeconds, problem

THREE_DAYS_S = 3 * 86400.0


class EndpointKeys(BaseModel):
    """Breaker and age keys of one endpoint (or of every callback endpoint)."""

    # Consecutive failed attempts (5xx, 408, 429, timeouts, connection errors) that open the breaker.
    breaker_failures: int = Field(default=5, ge=1)
    # How long an open endpoint waits before one probe; doubled while probes fail, up to the max.
    breaker_open_s: PositiveSeconds = 10.0
    breaker_open_max_s: PositiveSeconds = 300.0
    # An event still undelivered after this long is dead (`max_age`).
    max_delivery_age_s: PositiveSeconds = THREE_DAYS_S

    @model_validator(mode="after")
    def _check_breaker(self) -> Self:
        if self.breaker_open_max_s < self.breaker_open_s:
            raise problem(("breaker_open_max_s",), "must be >= breaker_open_s")
        return self
