"""`watcher run`: open the store, start the loops and the HTTP server, supervise them, stop gracefully.

Lifecycle (STYLE §7): resources are opened at start-up and closed at shutdown; a stop is an `asyncio.Event`;
on SIGTERM the scheduler stops claiming polls, in-flight polls and deliveries get `shutdown_grace_s` to
finish, the rest is cancelled (it stays in the store for the next start). If any loop dies, the supervisor
stops the daemon and `run` returns 1.

Start-up order: signal handlers first (a SIGHUP or SIGTERM during start-up is handled, never fatal), then
the HTTP server (`/healthz` answers, `/readyz` says 503), then the store, opened, migrated and restored
with backoff for as long as it is out (SPEC §16), then the loops. A store outage later on is waited out by
each loop (`watcher.health`); it never ends one.
"""

from __future__ import annotations

import asyncio
import gc
import random
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from watcher import __version__
from watcher.clock import Clock, SystemClock
from watcher.config import Settings
from watcher.config.tls import TlsFileError
from watcher.daemon.housekeeping import MIN_PAUSE_S, Housekeeping
from watcher.daemon.limits import budget
from watcher.daemon.parts import (
    WebhookRoutes,
    callback_http,
    callback_url_check,
    upstream_http,
    webhook_filters,
    webhook_http,
    webhook_targets,
    webhook_tester,
    workers,
)
from watcher.daemon.reload import ConfigReloader, LiveParts, ReloadPacer
from watcher.daemon.systemd import Notifier, notify_loop, status_line, watchdog_interval
from watcher.delivery.worker import DeliveryWorker
from watcher.errors import StartupError, StoreUnavailable
from watcher.health import StoreHealth, one_line
from watcher.http.app import build_app
from watcher.http.listener import CappedSite
from watcher.http.server import ApiRunner
from watcher.http.state import AppState
from watcher.metrics import Metrics
from watcher.models import CALLBACK, Watch
from watcher.polling.policy import first_due
from watcher.polling.scheduler import Scheduler
from watcher.sources.watchlist import WatchlistReloader
from watcher.store import Store, open_store

log = structlog.get_logger("watcher.daemon")


async def _cancel(tasks: set[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait for them, cancelling again what is still running after a while.

    A task cancelled in the middle of a database call may be waiting, in a cleanup step that shields
    itself from the first cancellation, for a connection that an outage broke: a second one ends it.
    """
    for _ in range(CANCEL_ROUNDS):
        for t in tasks:
            t.cancel()
        _, tasks = await asyncio.wait(tasks, timeout=CANCEL_WAIT_S)
        if not tasks:
            return
    log.error("daemon.tasks_not_cancelled", tasks=sorted(t.get_name() for t in tasks))


# Allocations between young-generation collections (CPython's default is 700). A poll allocates a few
# hundred objects that live for its round trip; with 64 polls in flight the default threshold promotes many
# of them to the older generations, which then get traversed again and again. Measured on the throughput
# benchmark: less CPU per poll. Memory is not held longer: refcounting frees them.
GC_THRESHOLDS = (50_000, 20, 20)
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
CANCEL_ROUNDS = 3
CANCEL_WAIT_S = 1.0
# While the store is out at start-up, each retry tells systemd to wait this much longer for READY=1.
START_EXTEND_US = 30_000_000


def tune_gc() -> None:
    """Move everything allocated at start-up out of the collector's way, then collect less often."""
    gc.collect()
    gc.freeze()  # the loaded modules, config and restored index are never garbage: stop re-traversing them
    gc.set_threshold(*GC_THRESHOLDS)


class Loops:
    """The supervisor's background tasks by name, and whether the daemon runs them (`LoopStatus`)."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.running = False  # every loop started and no stop begun: what `/readyz` calls "ready"

    def loops_alive(self) -> bool:
        """True while every background loop is still running."""
        return bool(self.tasks) and all(not t.done() for t in self.tasks.values())


class Daemon:
    """One job-watcher process."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        registry: CollectorRegistry | None = None,
        handle_signals: bool = True,
        store: Store | None = None,
        notifier: Notifier | None = None,
        tune_gc: bool = False,
        housekeeping_pause_s: float = MIN_PAUSE_S,
        load_config: Callable[[], Settings] | None = None,
    ) -> None:
        self.settings = settings
        self._housekeeping_pause_s = housekeeping_pause_s  # the least pause between gauge refreshes
        self.tune_gc = tune_gc  # the process is ours (`watcher run`): tune its garbage collector
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.targets = webhook_targets(settings)
        self._loops = Loops()
        self._scheduler: Scheduler | None = None
        self.metrics = Metrics(
            registry,
            webhooks=(*self.targets, *((CALLBACK,) if settings.callbacks.enabled else ())),
            now=self.clock.now,
            ready=self.is_ready,
            polls_waiting=self._polls_waiting,
        )
        self.health = StoreHealth(self.clock, self.rng, self.metrics)
        # `load_config` re-reads the configuration as at start-up (`watcher run`: the same file and
        # environment); without it SIGHUP reloads the watch list only.
        self._config = ConfigReloader(load_config, self.metrics, self.clock.now) if load_config else None
        self.handle_signals = handle_signals
        self._store = store  # injected by tests and embedders; otherwise built from store.url
        self.stop_event = asyncio.Event()
        # Deliveries stop after the scheduler has drained, so events from polls finishing during the drain
        # still go out before exit (within the same grace period).
        self.delivery_stop = asyncio.Event()
        self.state: AppState | None = None  # what the HTTP handlers read, once `run` has built it
        self._watchlist: WatchlistReloader | None = None
        self._reload_requested = False  # a SIGHUP that came before the reloader existed
        self._pacer = ReloadPacer(self.clock, self._reload_now)  # SIGHUPs, paced
        self.notifier = notifier or Notifier.from_env()  # sd_notify; a no-op outside systemd

    def is_ready(self) -> bool:
        """Running, every loop alive, and the store available as the loops see it (`watcher_ready`)."""
        return self._loops.running and self._loops.loops_alive() and self.health.available

    def _polls_waiting(self) -> int:
        return 0 if self._scheduler is None else self._scheduler.polls_waiting()

    def request_stop(self) -> None:
        """Begin a graceful stop (what SIGTERM does)."""
        if not self.stop_event.is_set():
            log.info("daemon.stopping")
        self.stop_event.set()

    def reload(self) -> None:
        """What SIGHUP does: reload the configuration (its tokens, clients and webhooks), then the watch
        list, whatever became of the configuration.

        Paced (`ReloadPacer`): a storm of signals costs the event loop about a tenth of its time in
        reloads, never the start-up or the polls.
        """
        self._pacer.request()

    def _reload_now(self) -> None:
        try:
            self.reload_config()
        finally:
            self.reload_watchlist()

    def reload_config(self) -> bool:
        """Re-read the configuration and apply what may change without a restart; False if it was kept
        (a bad file, no way to re-read it) or the reload waits until the daemon's parts are built."""
        r = None if self._config is None else self._config.reload(self.settings)
        if r is not None:
            self.settings, self.targets = r.settings, r.targets
        return r is not None

    def reload_watchlist(self) -> None:
        """Re-read the watch-list file soon (what SIGHUP does); during start-up, once the daemon runs."""
        if self._watchlist is not None:
            log.info("watchlist.reload_requested")
            self._watchlist.trigger()
        elif self.settings.watchlist.path is not None and not self._reload_requested:
            log.info("watchlist.reload_requested", deferred="until the daemon has started")
            self._reload_requested = True

    async def run(self) -> int:
        """Run until stopped; 0 after a clean stop (also during start-up), 1 if a loop died."""
        self._install_signals()
        try:
            return await self._run()
        finally:
            self._remove_signals()
            self._pacer.cancel()

    async def _run(self) -> int:
        s = self.settings
        if not s.api.is_loopback() and not s.api.has_auth():
            raise StartupError(
                f"api.listen: refusing to listen on {s.api.listen} without api.tokens or api.clients "
                "(set api.tokens or listen on 127.0.0.1)"
            )
        store = self._store if self._store is not None else open_store(s.resolved_store_url())
        upstream_session = upstream_http(s)
        webhook_session = webhook_http()
        callback_session = callback_http(s) if s.callbacks.enabled else None
        runner: web.AppRunner | None = None
        try:
            routes = WebhookRoutes(webhook_filters(s, self.targets))
            delivery, scheduler = workers(
                s, store, self.targets, self.metrics, self.clock, self.rng, self.health,
                upstream_session=upstream_session, webhook_session=webhook_session,
                callback_session=callback_session, routes=routes,
            )  # fmt: skip
            self._scheduler = scheduler
            # The API answers (`/healthz`, 503 from `/readyz`) while the store is opened and restored.
            self.state = AppState(
                s, store, self.metrics, self.clock, self.health, self._loops, scheduler.wake, delivery.wake,
                check_callback_url=callback_url_check(s),
                job_types=scheduler.learner.type_rows if scheduler.learner else list,
                test_webhook=webhook_tester(lambda: self.targets, webhook_session, self.clock, self.rng),
            )  # fmt: skip
            if self._config is not None and self._config.attach(LiveParts(self.state, delivery, routes)):
                self.reload_config()  # the SIGHUP of the start-up, applied now
            runner = await self._start_http(self.state)
            restored = await self._open_store(store)
            if restored is None:
                return 0  # stopped while the store was out, or during the restore
            return await self._run_loops(store, restored, delivery, scheduler)
        finally:
            if runner is not None:
                await runner.cleanup()
            await upstream_session.close()
            await webhook_session.close()
            if callback_session is not None:
                await callback_session.close()
            await store.close()
            log.info("daemon.stopped")

    async def _start_http(self, state: AppState) -> web.AppRunner:
        # ApiRunner: a request aiohttp cannot parse gets problem+json that echoes nothing, slow headers are
        # cut off, and CappedSite holds no more connections than the descriptors allow (SPEC §16).
        api = self.settings.api
        runner = ApiRunner(
            build_app(state), header_timeout_s=api.header_timeout_s, access_log=None, handle_signals=False
        )
        await runner.setup()
        cap = budget(self.settings).api_connections
        try:
            tls = api.ssl_context()  # read again now: checked when the configuration loaded
            await CappedSite(
                runner, api.host, api.port, cap=cap, count=runner.count,
                ssl_context=tls, handshake_timeout_s=api.header_timeout_s,
            ).start()  # fmt: skip
        except TlsFileError as exc:
            await runner.cleanup()
            raise StartupError(f"api.{exc.key}: {exc}") from exc
        except OSError as exc:
            await runner.cleanup()
            raise StartupError(
                f"api.listen: cannot listen on {self.settings.api.listen}: {exc.strerror}"
            ) from exc
        for sock in runner.addresses:
            log.info("api.listening", address=f"{sock[0]}:{sock[1]}", max_connections=cap, scheme=api.scheme)
        return runner

    async def _open_store(self, store: Store) -> int | None:
        """Open, migrate and restore the store, waiting out an outage; the unfinished watches, or None if a
        stop came first. An error that is not an outage (a newer schema, a bad password) propagates."""
        s = self.settings
        while not self.stop_event.is_set():
            now = self.clock.now()

            def spread(_w: Watch, now: float = now) -> float:
                return first_due(now, s.polling.initial_interval_s, self.rng)

            try:
                await store.open()
                restored = await store.restore(now, spread)
            except StoreUnavailable as exc:
                # systemd would give up on a start that takes longer than TimeoutStartSec: we are alive.
                self.notifier.send(
                    f"STATUS=waiting for the store: {one_line(exc)}",
                    f"EXTEND_TIMEOUT_USEC={START_EXTEND_US}",
                )
                await self.health.wait_out("start", exc, self.stop_event)
                continue
            self.health.ok("start")
            return None if self.stop_event.is_set() else restored
        return None

    async def _run_loops(
        self, store: Store, restored: int, delivery: DeliveryWorker, scheduler: Scheduler
    ) -> int:
        s = self.settings
        creds = s.upstream.credentials()
        loops: dict[str, Coroutine[Any, Any, None]] = {
            "scheduler": scheduler.run(self.stop_event),
            "delivery": delivery.run(self.delivery_stop),
            **({"learning": scheduler.learner.run(self.stop_event)} if scheduler.learner else {}),
            "housekeeping": Housekeeping(
                store,
                self.metrics,
                self.health,
                self.clock,
                self.rng,
                purge_interval_s=s.daemon.purge_interval_s,
                retention_s=s.polling.retention_s,
                min_pause_s=self._housekeeping_pause_s,
            ).run(self.stop_event),
        }
        if s.watchlist.path is not None:
            self._watchlist = WatchlistReloader(
                s.watchlist.path,
                store,
                default_workspace=s.upstream.workspace_slug,
                workspaces=tuple(creds),
                clock=self.clock,
                reload_interval_s=s.watchlist.reload_interval_s,
                settle_s=s.watchlist.settle_s or 0.0,
                metrics=self.metrics,
                on_change=scheduler.wake,
                health=self.health,
            )
            if self._reload_requested:
                self._watchlist.trigger()  # the SIGHUP of the start-up, applied now
            loops["watchlist"] = self._watchlist.run(self.stop_event)

        def summary() -> str:
            c = self.metrics.counts
            return status_line(
                c.watched_by_status if c else None,
                scheduler.inflight,
                c.pending_by_webhook if c else None,
                c.dead_by_webhook if c else None,
            )

        if self.notifier.enabled:
            loops["systemd"] = notify_loop(
                self.notifier, self.stop_event, self.clock, summary, watchdog_s=watchdog_interval()
            )
        self._loops.tasks = {name: asyncio.create_task(coro, name=name) for name, coro in loops.items()}
        if self.tune_gc:
            tune_gc()
        for problem in s.unknown_event_types():
            log.warning("config.unknown_event_type", problem=problem)
        self._loops.running = True
        self.notifier.ready(summary())
        log.info(
            "daemon.started",
            version=__version__,
            restored_watches=restored,
            webhooks=list(self.targets),
            workspaces=list(creds),
            listen=s.api.listen,
        )
        try:
            return await self._supervise(scheduler)
        finally:
            self._loops.running = False

    async def _supervise(self, scheduler: Scheduler) -> int:
        tasks = self._loops.tasks
        stop_wait = asyncio.create_task(self.stop_event.wait())
        done, _ = await asyncio.wait({stop_wait, *tasks.values()}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        stopping = stop_wait in done
        for name, task in tasks.items():
            if task not in done:
                continue
            exc = task.exception() if not task.cancelled() else None
            if exc is not None or not stopping:
                # A loop must only end because a stop was asked for; anything else is a dead daemon.
                log.error("daemon.loop_died", loop=name, error=repr(exc) if exc else "returned")
                code = 1
        self.stop_event.set()
        stop_wait.cancel()
        self._loops.running = (
            False  # /readyz fails at once, so a load balancer stops sending work while we drain
        )
        grace = self.settings.daemon.shutdown_grace_s
        self.notifier.stopping(f"stopping: draining {scheduler.inflight} polls (grace {grace:g}s)")
        deadline = self.clock.monotonic() + grace
        first = [t for name, t in tasks.items() if name != "delivery" and not t.done()]
        if first:
            await asyncio.wait(first, timeout=grace)
        self.delivery_stop.set()
        pending = [t for t in tasks.values() if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=max(0.0, deadline - self.clock.monotonic()))
            if still:
                log.warning(
                    "daemon.grace_expired",
                    cancelled_loops=[t.get_name() for t in still],
                    inflight_polls=scheduler.inflight,
                )
                await _cancel(still)
        for name, task in tasks.items():
            if task.done() and not task.cancelled() and task.exception() is not None and code == 0:
                log.error("daemon.loop_failed_during_stop", loop=name, error=repr(task.exception()))
                code = 1
        log.info("daemon.drained", polls_started=scheduler.polls_started, exit_code=code)
        return code

    def _install_signals(self) -> None:
        """Handle SIGTERM, SIGINT and SIGHUP on the loop, then let through what `watcher run` held back."""
        if not self.handle_signals:
            return
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)

    def _remove_signals(self) -> None:
        if not self.handle_signals:
            return
        loop = asyncio.get_running_loop()
        for sig in HANDLED_SIGNALS:
            loop.remove_signal_handler(sig)
