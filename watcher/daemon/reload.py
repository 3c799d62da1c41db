"""Reloading the configuration on SIGHUP: what may change in a running daemon, and the checks before it does.

A reload re-reads the file (and the environment) exactly as `watcher run` did, with the same validation.
Only `api.tokens`, `[[api.clients]]` and `[[webhooks]]` take effect at once (`RELOADED_KEYS`); every other
key keeps its running value until a restart, and each one that differs is named in a warning. The new
webhooks and clients are then checked against the running values of the rest (the lease against the new
timeouts, the workspaces they name, an API that listens beyond loopback keeps a token), and the webhook
targets are built (a template renders its sample event) before anything is swapped: a reload that fails
any check changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel, SecretStr, ValidationError

from watcher.clock import Clock
from watcher.config import Settings
from watcher.config.fields import SecretFile
from watcher.config.load import format_error
from watcher.daemon.parts import WebhookRoutes, webhook_filters, webhook_targets
from watcher.delivery.target import WebhookTarget
from watcher.delivery.worker import DeliveryWorker
from watcher.errors import ConfigError
from watcher.events import WebhookFilter
from watcher.http.state import AppState
from watcher.metrics import Metrics
from watcher.models import CALLBACK

log = structlog.get_logger("watcher.daemon")

# The keys a reload applies; everything else needs a restart (docs/operations/index.md lists them).
RELOADED_KEYS = frozenset({"api.tokens", "api.clients", "webhooks"})
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Reload:
    """A checked reload, ready to be swapped in: the configuration the daemon runs with from now on (the
    reloaded keys from the file, the running values of the rest), its webhook targets, and what changed."""

    settings: Settings
    targets: dict[str, WebhookTarget]
    filters: list[WebhookFilter]
    restart_required: list[str]  # keys that differ in the file but keep their running value
    webhooks_added: list[str]
    webhooks_removed: list[str]
    webhooks_changed: list[str]


def prepare(running: Settings, loaded: Settings) -> Reload:
    """Check `loaded` (the re-read file, already valid on its own) against the running configuration and
    build what a reload swaps in; ConfigError with one line per problem, naming the key, if it cannot."""
    effective = running.model_copy()
    api = running.api.model_copy(update={"tokens": loaded.api.tokens, "clients": loaded.api.clients})
    problems: list[str] = []
    for name, value in (("webhooks", loaded.webhooks), ("api", api)):
        try:  # runs the cross-section checks of `Settings` with the running values of the other sections
            Settings.__pydantic_validator__.validate_assignment(effective, name, value)
        except ValidationError as exc:
            problems.extend(format_error(err) for err in exc.errors())
    if not problems and not effective.api.is_loopback() and not effective.api.has_auth():
        problems.append(
            f"api.tokens: the API listens on {effective.api.listen}, beyond loopback: keep at least one token"
            " in api.tokens or api.clients"
        )
    if problems:
        raise ConfigError(problems)
    targets = webhook_targets(effective)  # ConfigError naming `webhooks[i].template` for a broken one
    before = {w.name: w for w in running.webhooks}
    after = {w.name: w for w in effective.webhooks}
    return Reload(
        effective,
        targets,
        webhook_filters(effective, targets),
        changed_keys(running, loaded),
        webhooks_added=[n for n in after if n not in before],
        webhooks_removed=[n for n in before if n not in after],
        webhooks_changed=[n for n in after if n in before and _diff(n, before[n], after[n])],
    )


@dataclass(frozen=True, slots=True)
class LiveParts:
    """What a reload changes in a running daemon: the handlers' state (tokens, clients, webhook names),
    the delivery worker's targets, and the scheduler's routes."""

    state: AppState
    delivery: DeliveryWorker
    routes: WebhookRoutes


def reload_config(
    load: Callable[[], Settings], running: Settings, parts: LiveParts, metrics: Metrics, now: float
) -> Reload | None:
    """Re-read the configuration with `load`, check it and swap it into `parts`: the reload, or None if it
    failed (logged as `config.reload_failed` with its problems, counted; the running configuration stays).

    Everything is built before the first reference changes, and no await comes between the swaps: a request
    or a delivery sees the old configuration or the new one, never a mix.
    """
    try:
        r = prepare(running, load())
    except ConfigError as exc:
        metrics.config_reloaded(False, now)
        log.error("config.reload_failed", problems=exc.problems, kept="the running configuration")
        return None
    except Exception as exc:  # a bug must not end the daemon on a SIGHUP: keep what runs
        metrics.config_reloaded(False, now)
        log.error("config.reload_failed", problems=[f"unexpected {type(exc).__name__}"], exc_info=exc)
        return None
    parts.routes.filters = tuple(r.filters)
    parts.delivery.reconfigure(r.targets)
    callbacks = (CALLBACK,) if r.settings.callbacks.enabled else ()
    metrics.track_webhooks((*r.targets, *callbacks))
    parts.state.reconfigure(r.settings)
    metrics.config_reloaded(True, now)
    for key in r.restart_required:
        log.warning("config.restart_required", key=key, kept="the running value until a restart")
    for problem in r.settings.unknown_event_types():
        log.warning("config.unknown_event_type", problem=problem)
    api = r.settings.api
    log.info(
        "config.reloaded",
        webhooks=list(r.targets),
        webhooks_added=r.webhooks_added,
        webhooks_removed=r.webhooks_removed,
        webhooks_changed=r.webhooks_changed,
        api_tokens=len(api.tokens),
        api_clients=[c.name for c in api.clients],
        restart_required=r.restart_required,
    )
    return r


class ConfigReloader:
    """The configuration half of SIGHUP: re-read with `load`, check, swap into the daemon's live parts.

    A SIGHUP before the parts exist (early in the start-up) is remembered and applied once they do.
    """

    def __init__(self, load: Callable[[], Settings], metrics: Metrics, now: Callable[[], float]) -> None:
        self._load = load
        self._metrics = metrics
        self._now = now
        self._parts: LiveParts | None = None
        self._requested = False

    def attach(self, parts: LiveParts) -> bool:
        """The daemon's parts are built; True if a reload was asked for before, to be done now."""
        self._parts = parts
        return self._requested

    def reload(self, running: Settings) -> Reload | None:
        """Reload over `running` (see `reload_config`); None if it failed or has to wait for the parts."""
        if self._parts is None:
            if not self._requested:
                log.info("config.reload_requested", deferred="until the daemon has started")
            self._requested = True
            return None
        self._requested = False
        log.info("config.reload_requested")
        return reload_config(self._load, running, self._parts, self._metrics, self._now())


# SIGHUP pacing: a few reloads in a row at once, then one per this many times as long as a reload takes.
RELOAD_BURST = 3.0
RELOAD_SPACING = 10.0


class ReloadPacer:
    """Runs `reload` for each request (SIGHUP), at once as long as requests come no faster than a few in
    a row (RELOAD_BURST); beyond that, one reload for all the requests that came meanwhile, RELOAD_SPACING
    times the last reload's duration after it. A reload reads and checks the file on the event loop, so a
    storm of signals then costs the loop about a tenth of its time, never the start-up or the polls."""

    def __init__(self, clock: Clock, reload: Callable[[], None]) -> None:
        self._clock = clock
        self._reload = reload
        self._credit = RELOAD_BURST  # reloads in hand
        self._at = 0.0  # monotonic end of the last reload
        self._unit = 0.0  # the spacing it earned: one credit back per unit
        self._later: asyncio.TimerHandle | None = None

    def request(self) -> None:
        """A reload is asked for: run it now, or once later for every request until then."""
        if self._later is not None:
            return  # the deferred reload will read what this request asks for
        if self._unit > 0:
            self._credit = min(RELOAD_BURST, self._credit + (self._clock.monotonic() - self._at) / self._unit)
        else:
            self._credit = RELOAD_BURST
        if self._credit < 1:
            wait = (1 - self._credit) * self._unit
            self._later = asyncio.get_running_loop().call_later(wait, self._deferred)
            return
        self._run()

    def cancel(self) -> None:
        """Drop a deferred reload (the daemon is stopping)."""
        if self._later is not None:
            self._later.cancel()
            self._later = None

    def _deferred(self) -> None:
        self._later = None
        self._run()

    def _run(self) -> None:
        started = self._clock.monotonic()
        try:
            self._reload()
        finally:
            self._at = self._clock.monotonic()
            self._unit = RELOAD_SPACING * (self._at - started)
            self._credit = max(0.0, self._credit - 1)


def changed_keys(running: BaseModel, loaded: BaseModel, prefix: str = "") -> list[str]:
    """The keys outside `RELOADED_KEYS` whose values differ, dotted (`polling.initial_interval_s`,
    `upstream.workspaces.eu.token`); only names, never values (some are secrets)."""
    out: list[str] = []
    for name in type(running).model_fields:
        key = f"{prefix}{name}"
        if key not in RELOADED_KEYS:
            out.extend(_diff(key, getattr(running, name), getattr(loaded, name, _MISSING)))
    return out


def _diff(key: str, a: Any, b: Any) -> list[str]:
    if isinstance(a, BaseModel) and type(a) is type(b):
        return changed_keys(a, b, f"{key}.")
    if isinstance(a, dict) and isinstance(b, dict):
        names = sorted({*a, *b}, key=str)
        return [k for n in names for k in _diff(f"{key}.{n}", a.get(n, _MISSING), b.get(n, _MISSING))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [k for i, (x, y) in enumerate(zip(a, b, strict=True)) for k in _diff(f"{key}[{i}]", x, y)]
    return [] if _same(a, b) else [key]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, SecretFile) or isinstance(b, SecretFile):  # read again at every load: compare contents
        return (
            isinstance(a, SecretFile)
            and isinstance(b, SecretFile)
            and (a.path, a.get_secret_value()) == (b.path, b.get_secret_value())
        )
    if isinstance(a, SecretStr) and isinstance(b, SecretStr):
        return a.get_secret_value() == b.get_secret_value()
    return bool(a == b)
