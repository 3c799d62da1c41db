"""The data every module shares: job statuses, watches, poll results, events and deliveries.

These are plain slotted dataclasses so that a million of them stay cheap; the store persists them and the
pure decision functions in `watcher.polling.policy` compute their next state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntFlag, StrEnum
from typing import Any
from urllib.parse import urlsplit


class JobStatus(StrEnum):
    """A status the upstream API reports for a job (SPEC §2)."""

    CREATED = "created"
    QUEUED = "queued"
    ACTIVE = "active"
    SUCCESS = "success"
    FAILED = "failed"
    RETRYING = "retrying"


# The default of `[upstream] terminal_statuses`; `watcher.statuses` names the statuses the upstream grows.
TERMINAL_STATUSES: frozenset[str] = frozenset({JobStatus.SUCCESS, JobStatus.FAILED})
KNOWN_STATUSES: frozenset[str] = frozenset(s.value for s in JobStatus)


class FinalState(StrEnum):
    """Why a watch stopped polling: the upstream's terminal status or the watcher's own verdict.

    `Watch.final` is a plain string: any status in `[upstream] terminal_statuses` (e.g. a grown
    `cancelled`) ends a watch too, so these are the usual values, not all of them.
    """

    SUCCESS = "success"
    FAILED = "failed"
    EXPIRED = "expired"
    MISSING = "missing"


# The list status of a watch that is neither finished nor polled, because its handling kept failing.
QUARANTINED = "quarantined"


class Source(IntFlag):
    """Who asked for a watch. The watch-list file is declarative, so removal is per source."""

    FILE = 1
    API = 2


class PollOutcome(StrEnum):
    """How one upstream poll ended; the same names are the `outcome` label of `watcher_polls_total`."""

    OK = "ok"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    CLIENT_ERROR = "client_error"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    NETWORK_ERROR = "network_error"
    INVALID_RESPONSE = "invalid_response"


# PollResult, SavedPoll and the policy's Decision are made once per poll each: they are values that nothing
# mutates, but not `frozen`, whose `__init__` (one `object.__setattr__` per field) costs twice as much.
@dataclass(slots=True)
class PollResult:
    """What the upstream client observed; it reports, the scheduler decides."""

    outcome: PollOutcome
    body: dict[str, Any] | None = None  # the upstream JSON as received, only when outcome is OK
    status_code: int | None = None
    retry_after_s: float | None = None  # parsed Retry-After (seconds or HTTP date), when present
    detail: str = ""  # short human reason, safe to log (never contains credentials)
    duration_s: float = 0.0


# The `webhook` of every callback delivery, in the store, the API and metric labels (SPEC §13).
CALLBACK = "callback"


@dataclass(slots=True, frozen=True)
class Callback:
    """A per-watch callback (SPEC §13): where this watch's events also go. Header values are secrets.

    `events` None is the default filter (as for webhooks); otherwise the sorted, distinct event types.
    """

    url: str = field(repr=False)
    events: tuple[str, ...] | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """What the store keeps (JSON)."""
        return {"url": self.url, "events": self.events, "headers": dict(self.headers)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Callback:
        """The callback a `to_dict` stored."""
        events = data.get("events")
        return cls(
            str(data["url"]), None if events is None else tuple(events), dict(data.get("headers") or {})
        )

    @property
    def endpoint(self) -> str:
        """The endpoint its deliveries go to, as the circuit breaker keys it: `scheme://host:port`."""
        parts = urlsplit(self.url)
        try:
            port = parts.port
        except ValueError:
            port = None
        port = port if port is not None else (443 if parts.scheme == "https" else 80)
        host = (parts.hostname or "").lower()
        return f"{parts.scheme}://[{host}]:{port}" if ":" in host else f"{parts.scheme}://{host}:{port}"

    def __repr__(self) -> str:
        return f"Callback(events={self.events!r}, headers=<{len(self.headers)} hidden>)"


@dataclass(slots=True)
class Registration:
    """A request to watch a job, from the watch-list file or the API."""

    job_id: str  # canonical lower-case UUID string
    workspace: str
    source: Source
    labels: dict[str, str] = field(default_factory=dict)
    webhooks: tuple[str, ...] | None = None  # None: every configured webhook whose filter matches
    max_watch_s: float | None = None  # None: `polling.max_watch_s`
    callback: Callback | None = None


@dataclass(slots=True)
class Watch:
    """One watched job and its polling state."""

    job_id: str
    workspace: str
    sources: int  # a `Source` bit set
    registered_at: float
    labels: dict[str, str] = field(default_factory=dict)
    webhooks: tuple[str, ...] | None = None
    max_watch_s: float | None = None
    status: str | None = None  # last status seen, as `statuses.status_name` names it; None before a poll
    final: str | None = None  # once polling has stopped: a terminal status name or a `FinalState` verdict
    polls: int = 0  # every poll made, whatever its outcome
    streak: int = 0  # successful polls since the status last changed: the n of SPEC §5
    errors: int = 0  # consecutive failed polls: the n of the error backoff
    not_found: int = 0  # consecutive 404s
    next_poll_at: float = 0.0
    last_polled_at: float | None = None
    finished_at: float | None = None
    last_error: str | None = None
    upstream_updated_at: str | None = None  # `updatedAt` of the last body seen
    lease: int = 0  # fencing token set by the store at every claim
    failures: int = 0  # unexpected exceptions while handling this watch, over its life (SPEC §16)
    quarantined_at: float | None = None  # set once `failures` reached the limit: never polled until released
    quarantine_reason: str | None = None  # the last failure, one line (exception type and message)
    callback: Callback | None = None  # where its events also go (SPEC §13); never changes once registered

    @property
    def finished(self) -> bool:
        """True once polling has stopped for good."""
        return self.final is not None

    @property
    def list_status(self) -> str:
        """What the API lists and filters the watch by: its final state, else `quarantined`, else its last
        status, else `unknown` (the same rule as the stores' SQL `LIST_STATUS`)."""
        if self.final is not None:
            return self.final
        if self.quarantined_at is not None:
            return QUARANTINED
        return self.status or "unknown"

    def copy(self) -> Watch:
        """A shallow copy (labels shared) for the policy's next state, at a quarter of the cost of
        `dataclasses.replace`: it runs once per poll."""
        return Watch(
            self.job_id, self.workspace, self.sources, self.registered_at, self.labels, self.webhooks,
            self.max_watch_s, self.status, self.final, self.polls, self.streak, self.errors, self.not_found,
            self.next_poll_at, self.last_polled_at, self.finished_at, self.last_error,
            self.upstream_updated_at, self.lease, self.failures, self.quarantined_at, self.quarantine_reason,
            self.callback,
        )  # fmt: skip


@dataclass(slots=True, frozen=True)
class Event:
    """Something that happened to a job, as sent to webhooks; `id` is stable (SPEC §6)."""

    id: str
    job_id: str
    workspace: str
    type: str
    created_at: float  # detected_at, epoch seconds
    payload: dict[str, Any]  # the `standard` body: {"type", "timestamp", "data": {...}}


@dataclass(slots=True, frozen=True)
class NewEvent:
    """An event to write together with the poll that caused it, and the webhooks it goes to."""

    event: Event
    webhooks: tuple[str, ...]


@dataclass(slots=True)
class SavedPoll:
    """A watch's new state after a poll (or a decision without a poll) and the events it produced."""

    watch: Watch  # carries the lease it was claimed with
    events: tuple[NewEvent, ...] = ()


class DeliveryState(StrEnum):
    """Where one (event, webhook) delivery stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class DeliveryOutcome(StrEnum):
    """How one delivery attempt ended: the transport's verdict, and the `outcome` label of
    `watcher_webhook_deliveries_total`."""

    SUCCESS = "success"  # delivered
    RETRY = "retry"  # failed; another attempt follows
    DEAD = "dead"  # failed for good: kept for replay


class DeadReason(StrEnum):
    """Why a delivery is dead (SPEC §13)."""

    MAX_ATTEMPTS = "max_attempts"  # the last of the webhook's `max_attempts` failed
    GONE = "gone"  # the receiver answered 410 Gone
    BLOCKED_ADDRESS = "blocked_address"  # the address guard refused the receiver's address
    MAX_AGE = "max_age"  # still undelivered after `max_delivery_age_s`
    RENDER_FAILED = "render_failed"  # the body could not be rendered
    NOT_CONFIGURED = "not_configured"  # its webhook is no longer in the configuration


@dataclass(slots=True)
class Delivery:
    """One event on its way to one webhook."""

    id: int
    event: Event
    webhook: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    created_at: float
    last_error: str | None = None
    delivered_at: float | None = None
    lease: int = 0
    callback: Callback | None = None  # set when `webhook` is CALLBACK: the watch's callback when it happened
    # A grouped message (`group_window_s`, SPEC §15): every member claimed with this one (itself included),
    # which go out as one message and share its outcome. Empty for a delivery sent on its own.
    group: tuple[Delivery, ...] = ()

    @property
    def endpoint(self) -> str:
        """Where it goes, as breakers and concurrency budgets key it: the webhook or the callback endpoint."""
        return self.callback.endpoint if self.callback is not None else self.webhook


@dataclass(slots=True, frozen=True)
class DeliveryUpdate:
    """The outcome of one delivery attempt, decided by the delivery policy.

    A dead delivery says why in `dead_reason`; `last_error` keeps the words of the last failure (what the
    API shows). The stores keep `last_error`, not the reason (SPEC §13 exposes it).
    """

    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    delivered_at: float | None = None
    dead_reason: DeadReason | None = None

    @property
    def outcome(self) -> DeliveryOutcome:
        """The attempt's outcome as `watcher_webhook_deliveries_total` counts it."""
        if self.state is DeliveryState.DELIVERED:
            return DeliveryOutcome.SUCCESS
        return DeliveryOutcome.DEAD if self.state is DeliveryState.DEAD else DeliveryOutcome.RETRY


class BreakerState(StrEnum):
    """Where an endpoint's circuit breaker stands (SPEC §13)."""

    CLOSED = "closed"  # deliveries go out
    OPEN = "open"  # deliveries wait, without spending attempts, until `open_until`
    HALF_OPEN = "half_open"  # one probe is out; the others wait until it is answered (or its lease ends)


@dataclass(slots=True, frozen=True)
class EndpointHealth:
    """The circuit breaker of one endpoint, as the store keeps it.

    `endpoint` is a configured webhook's name, or a callback URL's `scheme://host:port`; `webhook` is the
    name the metrics and the API use (`callback` for every callback endpoint). `version` is the store's
    compare-and-set token: a write of a stale version is refused, so two replicas never both take a probe.
    """

    endpoint: str
    webhook: str
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    open_until: float | None = None  # OPEN: when the probe may go; HALF_OPEN: when the probe's lease ends
    open_s: float | None = None  # the current open period, doubled while probes fail
    last_error: str | None = None
    version: int = 0  # 0: not stored yet


@dataclass(slots=True, frozen=True)
class Credentials:
    """How to reach one upstream workspace; built by the config, used by the upstream client."""

    slug: str
    base_url: str
    token: str = field(repr=False)
    api_key: str = field(repr=False)
    workspace_id: str | None = None


@dataclass(frozen=True, slots=True)
class WebhookTestResult:
    """What one test event sent to a webhook at once got (`POST /v1/webhooks/{name}/test`, SPEC §15)."""

    webhook: str
    event_id: str
    delivered: bool  # the receiver answered 2xx
    status_code: (
        int | None
    )  # the receiver's status; None when no answer came (timeout, refused, not rendered)
    detail: str  # one line, safe to show: `HTTP 200`, `timeout`, `render failed: …`
    duration_s: float
