"""What the HTTP handlers read: `AppState`, given whole to `build_app` and found under `STATE_KEY`.

A leaf of the HTTP package: the handlers know the settings, the store, the metrics, the clock, the store's
health, whether the daemon's loops run, and whom to wake when a request brings new work. Every part is
passed in when the state is built; the supervisor's tasks stay with the supervisor (`watcher.daemon`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from watcher.clock import Clock
from watcher.config import Settings
from watcher.health import StoreHealth
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


@dataclass(frozen=True, slots=True)
class AppState:
    """Everything a handler may look at or call."""

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

    @property
    def ready(self) -> bool:
        """True while the daemon runs its loops: not starting, not stopping."""
        return self.loops.running


STATE_KEY: web.AppKey[AppState] = web.AppKey("state")
