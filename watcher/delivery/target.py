"""A configured webhook as the delivery code sees it: where, how signed, which events, how patient."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from watcher.delivery.formats.base import FormatSettings
from watcher.proxies import Proxy


def _url_origin(url: str) -> str:
    # Slack-style webhook URLs carry their secret in the path, so only scheme and host are ever shown.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "") + "/…"


@dataclass(frozen=True)
class WebhookTarget:
    """One configured webhook; the repr hides its secrets, header values and URL path."""

    name: str
    url: str = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)
    events: frozenset[str]
    format: str = "standard"  # "standard" | "slack" | one of `watcher.delivery.formats.RENDERERS`
    timeout_s: float = 10.0
    max_attempts: int = 10
    retry_initial_s: float = 1.0
    retry_max_s: float = 300.0
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    concurrency: int = 4  # deliveries in flight at once to one endpoint of this target
    breaker_failures: int = 5
    breaker_open_s: float = 10.0
    breaker_open_max_s: float = 300.0
    max_delivery_age_s: float = 3 * 86400.0
    # > 0: the events waiting for this webhook go out as one message per window (SPEC §15).
    group_window_s: float = 0.0
    # The format's own settings (SPEC §15); its repr hides the routing key and the template.
    format_settings: FormatSettings = field(default_factory=FormatSettings, repr=False)
    # What its TLS connections trust and present (`ca_file`, mTLS); None: the system's trust, no client cert.
    # Targets compare by the files the context was read from (`tls_files`), not by the context object.
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    tls_files: tuple[str | None, ...] = (None, None, None)  # ca_file, client_cert_file, client_key_file
    # The forward proxy the environment names for `url` (decided at start-up), or None to connect directly.
    proxy: Proxy | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (
            f"WebhookTarget(name={self.name!r}, url={_url_origin(self.url)!r}, "
            f"secrets=<{len(self.secrets)} hidden>, "
            f"events={sorted(self.events)!r}, format={self.format!r}, timeout_s={self.timeout_s}, "
            f"max_attempts={self.max_attempts}, retry_initial_s={self.retry_initial_s}, "
            f"retry_max_s={self.retry_max_s}, headers={sorted(self.headers)!r}, "
            f"concurrency={self.concurrency}, breaker_failures={self.breaker_failures}, "
            f"breaker_open_s={self.breaker_open_s}, breaker_open_max_s={self.breaker_open_max_s}, "
            f"max_delivery_age_s={self.max_delivery_age_s}, group_window_s={self.group_window_s}, "
            f"tls_files={self.tls_files!r})"
        )
