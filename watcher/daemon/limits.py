"""File descriptors: how many API connections the process may hold and still open its outgoing ones.

Every API connection is a descriptor, and so is every poll, webhook delivery and store connection. If the
API took them all, the deliveries would fail for want of one (SPEC §16). At start-up the daemon raises its
soft `RLIMIT_NOFILE` towards the hard limit (systemd's default soft limit is 1,024, its hard one far
higher), and caps the API's connections so that `RESERVE` descriptors plus one per outgoing connection
always remain.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

import structlog

from watcher.config import Settings

log = structlog.get_logger("watcher.daemon")

# Descriptors for everything that is not a connection in a pool: the store (SQLite file and journal, or a
# few PostgreSQL connections), the listening sockets, the epoll and self-pipe, the watch list, logs.
RESERVE = 64
WEBHOOK_POOL = 100  # the webhook session's connection limit (watcher.daemon.parts.webhook_http)
MIN_API_CONNECTIONS = 8  # however low the limit, the API keeps this many (else /healthz is never answered)


@dataclass(frozen=True, slots=True)
class DescriptorBudget:
    """The descriptor limit the daemon runs with, and what it leaves for the API."""

    limit: int  # the soft RLIMIT_NOFILE in force
    reserved: int  # kept for outgoing connections and the rest
    api_connections: int  # the API's connection cap: api.max_connections, or less
    wanted: int  # api.max_connections

    @property
    def lowered(self) -> bool:
        """True if the limit made the cap lower than api.max_connections."""
        return self.api_connections < self.wanted


def reserved(settings: Settings) -> int:
    """Descriptors kept for everything but API connections."""
    return RESERVE + WEBHOOK_POOL + settings.upstream.max_concurrency


def budget(settings: Settings) -> DescriptorBudget:
    """Raise the soft descriptor limit as far as needed (and allowed), and size the API's cap to it."""
    keep = reserved(settings)
    wanted = settings.api.max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + keep
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError) as exc:  # a container may forbid it; keep the limit we have
            log.warning("daemon.nofile_not_raised", soft=soft, wanted=raised, error=str(exc))
    room = needed if soft == resource.RLIM_INFINITY else soft - keep
    cap = min(wanted, max(MIN_API_CONNECTIONS, room))
    result = DescriptorBudget(limit=soft, reserved=keep, api_connections=cap, wanted=wanted)
    if result.lowered:
        log.warning(
            "api.max_connections_lowered",
            max_connections=wanted,
            cap=cap,
            nofile=soft,
            reserved=keep,
            hint="raise LimitNOFILE (systemd) or the container's nofile limit",
        )
    return result
