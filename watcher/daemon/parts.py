"""The daemon's parts, built from the settings: webhook targets, the polling policy, the HTTP sessions, the
delivery worker and the scheduler with its upstream client, rate limit and learner (adaptive polling).
Building one starts nothing."""

from __future__ import annotations

import random
import ssl
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import fields
from pathlib import Path

import aiohttp
import structlog

from watcher import __version__
from watcher.clock import Clock, iso_utc
from watcher.config import Settings, WebhookConfig
from watcher.config.tls import ClientTlsKeys, TlsFileError
from watcher.delivery.breaker import Breakers
from watcher.delivery.callbacks import CallbackTargets
from watcher.delivery.formats import FormatSettings, alertmanager, validate_template
from watcher.delivery.formats.template import SAMPLE_EVENT
from watcher.delivery.guard import AddressGuard, CallbackUrlError, guarded_connector
from watcher.delivery.target import WebhookTarget
from watcher.delivery.webhook import WebhookSender
from watcher.delivery.worker import DeliveryWorker
from watcher.errors import ConfigError
from watcher.events import WebhookFilter, route
from watcher.health import StoreHealth
from watcher.metrics import Metrics
from watcher.models import CALLBACK, Delivery, DeliveryOutcome, DeliveryState, Event, Watch, WebhookTestResult
from watcher.polling.adaptive import AdaptiveSettings
from watcher.polling.buckets import Buckets
from watcher.polling.learning import Learner
from watcher.polling.policy import PollingPolicy
from watcher.polling.scheduler import Scheduler
from watcher.polling.upstream import UpstreamClient
from watcher.proxies import Proxy, environment_proxies, proxy_for
from watcher.statuses import default_events
from watcher.store.base import Store

log = structlog.get_logger("watcher.daemon")
# The type of the event `POST /v1/webhooks/{name}/test` sends (SPEC §15).
TEST_EVENT = "webhook.test"

# What a webhook's target and the polling policy take from their sections as they are; the rest is converted.
_TARGET_KEYS = {
    "name", "url", "format", "timeout_s", "max_attempts", "retry_initial_s", "retry_max_s", "concurrency",
    "breaker_failures", "breaker_open_s", "breaker_open_max_s", "max_delivery_age_s", "group_window_s",
}  # fmt: skip
_CALLBACK_KEYS = {
    "timeout_s", "max_attempts", "retry_initial_s", "retry_max_s", "breaker_failures", "breaker_open_s",
    "breaker_open_max_s", "max_delivery_age_s",
}  # fmt: skip
_POLICY_KEYS = {f.name for f in fields(PollingPolicy)} - {"terminal_statuses"}


def format_settings(hook: WebhookConfig, index: int) -> FormatSettings:
    """A webhook's format settings (SPEC §15); a `template` is compiled and tried on a sample event first.

    Raises ConfigError naming `webhooks[index].template` when the template does not render the sample.
    """
    if hook.format == "template" and hook.template is not None:
        validate_template(hook.template, f"webhooks[{index}].template")
    key = hook.routing_key.get_secret_value() if hook.routing_key is not None else None
    return FormatSettings(
        name=hook.name,
        routing_key=key,
        alert_duration_s=hook.alert_duration_s,
        template=hook.template,
        content_type=hook.content_type,
    )


def webhook_targets(settings: Settings) -> dict[str, WebhookTarget]:
    """The configured webhooks as delivery targets, keyed by name; ConfigError for a broken template.

    Webhooks with the same TLS files share one SSL context (aiohttp pools connections per context), read
    from the files now: a rebuilt set of targets sees renewed certificates.
    """
    targets = {}
    contexts: dict[tuple[Path | None, ...], ssl.SSLContext | None] = {}
    proxies = environment_proxies()
    for i, w in enumerate(settings.webhooks):
        values = w.model_dump(include=_TARGET_KEYS)
        if w.format == "alertmanager":
            values["url"] = alertmanager.alerts_url(w.url)
        targets[w.name] = WebhookTarget(
            **values,
            secrets=tuple(w.all_secrets()),
            events=frozenset(w.events or ()),
            headers=dict(w.headers),
            format_settings=format_settings(w, i),
            ssl_context=_context(contexts, w, f"webhooks[{i}]"),
            tls_files=tuple(None if p is None else str(p) for p in w.tls_files()),
            proxy=proxy_for(values["url"], proxies),
        )
    return targets


def _context(
    contexts: dict[tuple[Path | None, ...], ssl.SSLContext | None], keys: ClientTlsKeys, where: str
) -> ssl.SSLContext | None:
    """The SSL context of `keys`, made once per distinct set of files; a file that went bad since the
    configuration was loaded is a ConfigError naming `where`'s key."""
    files = keys.tls_files()
    if files not in contexts:
        try:
            contexts[files] = keys.ssl_context()
        except TlsFileError as e:
            raise ConfigError([f"{where}.{e.key}: {e}"]) from None
    return contexts[files]


def tls_context(keys: ClientTlsKeys, where: str) -> ssl.SSLContext | None:
    """The SSL context of one section's TLS keys (`[upstream]`, `[callbacks]`); ConfigError naming `where`."""
    return _context({}, keys, where)


def webhook_filters(settings: Settings, targets: dict[str, WebhookTarget]) -> list[WebhookFilter]:
    """What each webhook takes: its event types, and its `workspaces` and `labels` filters (SPEC §15)."""
    return [
        WebhookFilter(
            w.name,
            targets[w.name].events,
            None if w.workspaces is None else frozenset(w.workspaces),
            dict(w.labels),
        )
        for w in settings.webhooks
        if w.name in targets
    ]


class WebhookRoutes:
    """Which configured webhooks an event goes to, by their filters; a reload swaps the filters whole."""

    def __init__(self, filters: list[WebhookFilter]) -> None:
        self.filters = tuple(filters)

    def __call__(self, event_type: str, watch: Watch) -> tuple[str, ...]:
        """The names of the webhooks that take an event of `event_type` about `watch`."""
        return route(event_type, watch, self.filters)


def polling_policy(settings: Settings) -> PollingPolicy:
    """The `[polling]` section as the pure policy's parameters."""
    return PollingPolicy(
        **settings.polling.model_dump(include=_POLICY_KEYS),
        terminal_statuses=frozenset(settings.upstream.terminal_statuses),
    )


def adaptive_settings(settings: Settings) -> AdaptiveSettings:
    """The `[polling] adaptive_*` keys and `slow_quantile` (SPEC §12) as the planner's settings."""
    p = settings.polling
    return AdaptiveSettings(
        lag_target_s=p.adaptive_lag_target_s,
        min_samples=p.adaptive_min_samples,
        min_interval_s=p.adaptive_min_interval_s,
        max_interval_s=p.adaptive_max_interval_s,
        max_types=p.adaptive_max_types,
        window=p.adaptive_window,
        slow_quantile=p.slow_quantile,
    )


def upstream_proxies(settings: Settings) -> dict[str, Proxy | None]:
    """Each workspace's forward proxy from the environment (HTTPS_PROXY/HTTP_PROXY/NO_PROXY), by slug."""
    proxies = environment_proxies()
    return {slug: proxy_for(c.base_url, proxies) for slug, c in settings.upstream.credentials().items()}


def upstream_contexts(settings: Settings) -> dict[str, ssl.SSLContext]:
    """The SSL contexts of the workspaces that set TLS keys of their own, by slug (the others use the
    session's, `[upstream]`'s); ConfigError naming the workspace's key for a file that went bad."""
    contexts: dict[tuple[Path | None, ...], ssl.SSLContext | None] = {}
    own = {}
    for slug, ws in settings.upstream.workspaces.items():
        if ws.has_tls():
            context = _context(contexts, ws, f"upstream.workspaces.{slug}")
            if context is not None:
                own[slug] = context
    return own


def upstream_http(settings: Settings) -> aiohttp.ClientSession:
    """The session of the upstream polls: as many connections as polls in flight, no cookies; the
    `[upstream]` TLS keys (a workspace with its own: `upstream_contexts`, per request; proxies:
    `upstream_proxies`, per request)."""
    context = tls_context(settings.upstream, "upstream")
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=settings.upstream.max_concurrency,
            limit_per_host=0,
            ssl=True if context is None else context,
        ),
        headers={"User-Agent": f"job-watcher/{__version__}"},
        cookie_jar=aiohttp.DummyCookieJar(),  # the API authenticates by header; keep no cookies
    )


def webhook_http() -> aiohttp.ClientSession:
    """The session of the configured webhooks' deliveries; each target brings its own SSL context and
    proxy (`webhook_targets`). Not `trust_env`: see `watcher.proxies`."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))


def callback_guard(settings: Settings) -> AddressGuard:
    """The `[callbacks]` address policy (validated with the configuration, so it builds)."""
    cb = settings.callbacks
    return AddressGuard.from_config(cb.allow_networks, require_https=cb.require_https)


def callback_url_check(settings: Settings) -> Callable[[str], str | None] | None:
    """What the API checks a callback URL with (scheme, a literal address): why it is refused, or None.

    None when callbacks are off. A hostname is not resolved here: its addresses are checked per connection.
    """
    if not settings.callbacks.enabled:
        return None
    guard = callback_guard(settings)

    def check(url: str) -> str | None:
        try:
            guard.check_url(url)
        except CallbackUrlError as exc:
            return str(exc)
        return None

    return check


def callback_http(settings: Settings) -> aiohttp.ClientSession:
    """The session of callback deliveries: every connection through the address guard, on the address
    actually connected; no proxy from the environment (the guard would see the proxy), no cookies."""
    return aiohttp.ClientSession(
        connector=guarded_connector(callback_guard(settings), limit=100),
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def workers(
    settings: Settings,
    store: Store,
    targets: dict[str, WebhookTarget],
    metrics: Metrics,
    clock: Clock,
    rng: random.Random,
    health: StoreHealth,
    *,
    upstream_session: aiohttp.ClientSession,
    webhook_session: aiohttp.ClientSession,
    callback_session: aiohttp.ClientSession | None = None,
    routes: WebhookRoutes | None = None,
) -> tuple[DeliveryWorker, Scheduler]:
    """The worker that drains the outbox to `targets` (and, with `callback_session`, to callbacks), and the
    scheduler that polls every due watch, routes its events to `targets` by their filters (`routes`, which
    a reload may change; by default those of `settings`), and to the watch's callback by its own, and
    wakes the worker when it saved some."""
    s = settings
    cb = s.callbacks
    callbacks = None
    if cb.enabled and callback_session is not None:
        callbacks = CallbackTargets.build(
            callback_guard(s),
            WebhookSender(callback_session, clock),
            secrets=tuple(cb.all_secrets()),
            concurrency=cb.concurrency_per_endpoint,
            ssl_context=tls_context(cb, "callbacks"),
            tls_files=tuple(None if p is None else str(p) for p in cb.tls_files()),
            **cb.model_dump(include=_CALLBACK_KEYS),
        )
    delivery = DeliveryWorker(
        store,
        WebhookSender(webhook_session, clock),
        targets,
        metrics,
        clock,
        rng,
        concurrency=s.daemon.delivery_concurrency,
        lease_s=s.daemon.lease_s,
        health=health,
        callbacks=callbacks,
        breakers=Breakers(
            store,
            clock,
            metrics,
            probe_lease_s=s.daemon.lease_s,
            webhooks=(*targets, *((CALLBACK,) if callbacks is not None else ())),
        ),
    )
    routes = routes or WebhookRoutes(webhook_filters(s, targets))
    callback_default = frozenset(default_events(s.upstream.terminal_statuses))

    def route_event(event_type: str, watch: Watch) -> tuple[str, ...]:
        names = routes(event_type, watch)
        callback = watch.callback
        if callbacks is None or callback is None:
            return names
        wanted = callback_default if callback.events is None else callback.events
        return (*names, CALLBACK) if event_type in wanted else names

    upstream = UpstreamClient(
        upstream_session,
        s.upstream.credentials(),
        s.upstream.timeout_s,
        clock,
        max_body_bytes=s.upstream.max_body_bytes,
        proxies=upstream_proxies(s),
        ssl_contexts=upstream_contexts(s),
    )
    policy = polling_policy(s)
    learner = Learner(
        store,
        metrics,
        clock,
        adaptive_settings(s),
        policy,
        route_event,
        adaptive=s.polling.strategy == "adaptive",
        rng=rng,
        health=health,
    )
    scheduler = Scheduler(
        store,
        upstream,
        policy,
        Buckets(
            clock,
            s.upstream.rate_limit_per_s,
            s.upstream.workspace_rates(),
            throttled_gauge=metrics.upstream_throttled,
        ),
        metrics,
        clock,
        rng,
        route_event,
        max_concurrency=s.upstream.max_concurrency,
        lease_s=s.daemon.lease_s,
        on_events=delivery.wake,
        health=health,
        learner=learner,
    )
    return delivery, scheduler


def webhook_tester(
    targets: Callable[[], Mapping[str, WebhookTarget]],
    session: aiohttp.ClientSession,
    clock: Clock,
    rng: random.Random,
) -> Callable[[str], Awaitable[WebhookTestResult]]:
    """What `POST /v1/webhooks/{name}/test` calls: send a `webhook.test` event to the named webhook now,
    rendered in its format and signed like any delivery, without storing it; what the receiver said.

    The event's `data` is the sample job.failed event's (a job, workspace, labels), so a format or a
    template shows what a real alert looks like; `type` is `webhook.test` and its id is new every time.
    `targets` gives the webhooks as configured now (a reload changes them).
    """

    sender = WebhookSender(session, clock)

    async def test(name: str) -> WebhookTestResult:
        target = targets()[name]
        now = clock.now()
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        payload = {**SAMPLE_EVENT.payload, "type": TEST_EVENT, "timestamp": iso_utc(now)}
        event = Event(event_id, SAMPLE_EVENT.job_id, SAMPLE_EVENT.workspace, TEST_EVENT, now, payload)
        delivery = Delivery(0, event, name, DeliveryState.PENDING, 0, now, now)
        result = await sender.send(target, delivery)
        log.info("webhook.tested", webhook=name, event_id=event_id, outcome=result.kind, reason=result.detail)
        return WebhookTestResult(
            webhook=name,
            event_id=event_id,
            delivered=result.kind is DeliveryOutcome.SUCCESS,
            status_code=result.status_code,
            detail=result.detail,
            duration_s=result.duration_s,
        )

    return test
