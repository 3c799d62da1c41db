"""The sd_notify datagram protocol: tell systemd READY, STATUS, WATCHDOG and STOPPING without a dependency.

systemd passes `NOTIFY_SOCKET` (a filesystem path, or `@name` for the abstract namespace) to a `Type=notify`
service; each notification is one datagram of newline-separated `KEY=value` lines. With `WatchdogSec=` set,
systemd also passes `WATCHDOG_USEC` (and `WATCHDOG_PID`, the process it is meant for): the service must send
`WATCHDOG=1` more often than that or it is killed and restarted. The pings come from the event loop itself,
so a blocked loop stops them. Without `NOTIFY_SOCKET` every call is a no-op, so nothing changes outside
systemd. See sd_notify(3).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

import structlog

from watcher.clock import Clock, sleep_or_stop

log = structlog.get_logger("watcher.systemd")

# How often STATUS= is re-evaluated when no watchdog asks for faster ticks; sent only when it changed.
STATUS_INTERVAL_S = 2.0


class Notifier:
    """Sends sd_notify datagrams to `NOTIFY_SOCKET`; a no-op when the variable is unset."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._warned = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for through `NOTIFY_SOCKET`, if any."""
        env = os.environ if env is None else env
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """True when running under a supervisor that listens for notifications."""
        return self.address is not None

    def _sockaddr(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):  # abstract namespace: a leading NUL byte instead of the '@'
            return b"\0" + self.address[1:].encode()
        return self.address

    def send(self, *lines: str) -> bool:
        """Send one datagram of `KEY=value` lines; True if it was sent (never raises, never blocks)."""
        if self.address is None or not lines:
            return False
        payload = "\n".join(lines).encode("utf-8", errors="replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)  # a full queue must not stall the event loop; systemd drains it
                sock.sendto(payload, self._sockaddr())
        except OSError as exc:
            if not self._warned:  # one warning: a notify socket that went away is not worth a log flood
                log.warning("systemd.notify_failed", socket=self.address, error=exc.strerror or str(exc))
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        """The service is up: the store is open and the loops run."""
        return self.send("READY=1", f"STATUS={one_line(status)}")

    def status(self, status: str) -> bool:
        """Update the one-line status `systemctl status` shows."""
        return self.send(f"STATUS={one_line(status)}")

    def watchdog(self) -> bool:
        """Tell systemd's watchdog the event loop is alive."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str) -> bool:
        """A graceful stop has begun."""
        return self.send("STOPPING=1", f"STATUS={one_line(status)}")


def one_line(text: str) -> str:
    """`text` with line breaks replaced, so it cannot inject another `KEY=value` line."""
    return " ".join(text.split())


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings (half of `WATCHDOG_USEC`), or None when no watchdog is asked for.

    `WATCHDOG_PID`, when set, names the process the watchdog is meant for; any other process ignores it
    (as sd_watchdog_enabled(3) does), so a child that inherited the environment does not ping.
    """
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC", "")
    if not raw.isdigit() or int(raw) <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(raw) / 2_000_000


async def notify_loop(
    notifier: Notifier,
    stop: asyncio.Event,
    clock: Clock,
    status: Callable[[], str],
    *,
    watchdog_s: float | None,
    status_interval_s: float = STATUS_INTERVAL_S,
) -> None:
    """Ping the watchdog every `watchdog_s` (if set) and send STATUS= when it changes, until `stop`."""
    interval = min(status_interval_s, watchdog_s) if watchdog_s else status_interval_s
    last_status: str | None = None
    while not stop.is_set():
        lines = ["WATCHDOG=1"] if watchdog_s else []
        text = one_line(status())
        if text != last_status:
            lines.append(f"STATUS={text}")
            last_status = text
        notifier.send(*lines)
        await sleep_or_stop(clock, interval, stop)


def status_line(
    watched_by_status: Mapping[str, int] | None,
    polls_in_flight: int,
    pending_by_webhook: Mapping[str, int] | None,
    dead_by_webhook: Mapping[str, int] | None,
) -> str:
    """The one-line summary for `systemctl status`, e.g. `watching 12 jobs, 3 polls in flight; …`."""
    watched = sum((watched_by_status or {}).values())
    pending = sum((pending_by_webhook or {}).values())
    dead = sum((dead_by_webhook or {}).values())
    return (
        f"watching {watched} jobs, {polls_in_flight} polls in flight; "
        f"{pending} deliveries pending, {dead} dead"
    )
