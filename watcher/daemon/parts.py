"""The daemon's parts, built from the settings: webhook targets, the polling policy, the HTTP sessions, the
delivery worker and the scheduler with its upstream client and rate limit. Building one starts nothing."""

from __future__ import annotations

import random
from collections.abc import Callable

import aiohttp

from watcher import __version__
from watcher.clock import Clock
from watcher.config import Settings
from watcher.delivery.target import WebhookTarget
from watcher.delivery.webhook import WebhookSender
from watcher.delivery.worker import DeliveryWorker
from watcher.events import route
from watcher.health import StoreHealth
from watcher.metrics import Metrics
from watcher.models import Watch
from watcher.polling.policy import PollingPolicy
from watcher.polling.ratelimit import TokenBucket
from watcher.polling.scheduler import Scheduler
from watcher.polling.upstream import UpstreamClient
from watcher.store.base import Store


def webhook_targets(settings: Settings) -> dict[str, WebhookTarget]:
    """The configured webhooks as delivery targets, keyed by name."""
    return {
        w.name: WebhookTarget(
            name=w.name,
            url=str(w.url),
            secrets=tuple(w.all_secrets()),
            events=frozenset(w.events or ()),
            format=w.format,
            timeout_s=w.timeout_s,
            max_attempts=w.max_attempts,
            retry_initial_s=w.retry_initial_s,
            retry_max_s=w.retry_max_s,
            headers=dict(w.headers),
        )
        for w in settings.webhooks
    }


def polling_policy(settings: Settings) -> PollingPolicy:
    """The `[polling]` section as the pure policy's parameters."""
    p = settings.polling
    return PollingPolicy(
        initial_interval_s=p.initial_interval_s,
        multiplier=p.multiplier,
        max_interval_s=p.max_interval_s,
        jitter=p.jitter,
        max_watch_s=p.max_watch_s,
        not_found_limit=p.not_found_limit,
        error_backoff_max_s=p.error_backoff_max_s,
        terminal_statuses=frozenset(settings.upstream.terminal_statuses),
    )


def upstream_http(settings: Settings) -> aiohttp.ClientSession:
    """The session of the upstream polls: as many connections as polls in flight, no cookies."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=settings.upstream.max_concurrency, limit_per_host=0),
        headers={"User-Agent": f"job-watcher/{__version__}"},
        cookie_jar=aiohttp.DummyCookieJar(),  # the API authenticates by header; keep no cookies
    )


def webhook_http() -> aiohttp.ClientSession:
    """The session of the webhook deliveries."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))


def delivery_worker(
    settings: Settings,
    store: Store,
    session: aiohttp.ClientSession,
    targets: dict[str, WebhookTarget],
    metrics: Metrics,
    clock: Clock,
    rng: random.Random,
    health: StoreHealth,
) -> DeliveryWorker:
    """The worker that drains the outbox to `targets`."""
    return DeliveryWorker(
        store,
        WebhookSender(session, clock),
        targets,
        metrics,
        clock,
        rng,
        concurrency=settings.daemon.delivery_concurrency,
        lease_s=settings.daemon.lease_s,
        health=health,
    )


def scheduler_for(
    settings: Settings,
    store: Store,
    session: aiohttp.ClientSession,
    targets: dict[str, WebhookTarget],
    metrics: Metrics,
    clock: Clock,
    rng: random.Random,
    health: StoreHealth,
    *,
    on_events: Callable[[], None],
) -> Scheduler:
    """The scheduler polling every due watch, routing its events to `targets` by their filters."""
    s = settings
    filters = [(t.name, t.events) for t in targets.values()]

    def route_event(event_type: str, watch: Watch) -> tuple[str, ...]:
        return route(event_type, watch, filters)

    upstream = UpstreamClient(
        session,
        s.upstream.credentials(),
        s.upstream.timeout_s,
        clock,
        max_body_bytes=s.upstream.max_body_bytes,
    )
    return Scheduler(
        store,
        upstream,
        polling_policy(s),
        TokenBucket(s.upstream.rate_limit_per_s, clock),
        metrics,
        clock,
        rng,
        route_event,
        max_concurrency=s.upstream.max_concurrency,
        lease_s=s.daemon.lease_s,
        on_events=on_events,
        health=health,
    )
