"""The `[callbacks]` section (SPEC §13): per-watch callback URLs that API clients give, off by default.

A callback is delivered like a configured webhook (format `standard`, signed with this section's secret)
but only ever through the address guard, which refuses loopback, private and other internal addresses
unless they lie inside `allow_networks`.
"""

from __future__ import annotations

import ipaddress
from typing import Self

from pydantic import ConfigDict, Field, model_validator

from watcher.config.endpoint import EndpointKeys
from watcher.config.fields import PositiveSeconds, SecretFile, SigningSecrets, WebhookSecret, problem
from watcher.config.tls import ClientTlsKeys


def _network(value: str) -> str:
    try:
        ipaddress.ip_network(value)
    except ValueError:
        raise ValueError("must be a network in CIDR form without host bits, e.g. 127.0.0.0/8") from None
    return value


class CallbacksConfig(EndpointKeys, SigningSecrets, ClientTlsKeys):
    """Per-watch callbacks: whether API clients may give one, how they are signed and where they may go."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # as every section: a typo is an error

    enabled: bool = False
    secret: WebhookSecret | None = None
    secrets: list[WebhookSecret] | None = None
    secret_file: SecretFile | None = None
    require_https: bool = True
    allow_networks: list[str] = []
    timeout_s: PositiveSeconds = 10.0
    max_attempts: int = Field(default=10, ge=1)
    retry_initial_s: PositiveSeconds = 1.0
    retry_max_s: PositiveSeconds = 600.0
    # Deliveries to one callback endpoint (scheme, host, port) in flight at once.
    concurrency_per_endpoint: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        given = self.given_secrets()
        if self.enabled and not given:
            raise problem(("secret",), "required when callbacks are enabled (or set secrets or secret_file)")
        if self.retry_max_s < self.retry_initial_s:
            raise problem(("retry_max_s",), "must be >= retry_initial_s")
        for i, network in enumerate(self.allow_networks):
            try:
                _network(network)
            except ValueError as e:
                raise problem(("allow_networks", i), str(e)) from None
        return self
