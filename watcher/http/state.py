"""What the HTTP handlers read: `AppState`, given whole to `build_app` and found under `STATE_KEY`.

A leaf of the HTTP package: the handlers know the settings, the store, the metrics, the clock, the store's
health, whether the daemon's loops run, and whom to wake when a request brings new work. Every part is
passed in when the state is built; the supervisor's tasks stay with the supervisor (`watcher.daemon`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from watcher.clock import Clock
from watcher.config import Settings
from watcher.health import StoreHealth
from watcher.http.clients import Clients
from watcher.metrics import Metrics
from watcher.models import WebhookTestResult
from watcher.store.base import Store


class LoopStatus(Protocol):
    """What the supervisor tells the handlers about its background loops."""

    @property
    def running(self) -> bool:
        """True once every loop was started, until a stop begins."""
        ...

    def loops_alive(self) -> bool:
        """True while every background loop is still running."""
        ...


@dataclass(slots=True)
class AppState:
    """Everything a handler may look at or call.

    Handlers read it, never change it; only `reconfigure` does (a configuration reload), in one step.
    """

    settings: Settings
    store: Store
    metrics: Metrics
    clock: Clock
    health: StoreHealth
    loops: LoopStatus
    wake_scheduler: Callable[[], None]  # a registration or a release: look for due watches at once
    wake_delivery: Callable[[], None]  # a replay: look for due deliveries at once
    # Callbacks enabled: why a callback URL is refused at registration (None: allowed); None: callbacks off.
    check_callback_url: Callable[[str], str | None] | None = None
    # The learnt job types (SPEC §12), one dict per type: workspace, name, samples, p50_s, p90_s, p99_s.
    job_types: Callable[[], list[dict[str, object]]] = list
    # Sends a `webhook.test` event to the named webhook now and says what the receiver answered (SPEC §15).
    test_webhook: Callable[[str], Awaitable[WebhookTestResult]] | None = None
    # Who may call the API (`api.tokens`, `[[api.clients]]`), built from `settings`.
    clients: Clients = field(init=False)

    def __post_init__(self) -> None:
        self.clients = Clients(self.settings.api)

    def reconfigure(self, settings: Settings) -> None:
        """Serve `settings` from now on (a configuration reload): its tokens, clients and webhooks. Requests
        already authenticated finish as they began."""
        self.clients = Clients(settings.api, previous=self.clients)
        self.settings = settings

    @property
    def ready(self) -> bool:
        """True while the daemon runs its loops: not starting, not stopping."""
        return self.loops.running


STATE_KEY: web.AppKey[AppState] = web.AppKey("state")
