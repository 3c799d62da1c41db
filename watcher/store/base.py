"""The store interface. Only store modules speak SQL; everything else calls these methods.

The interface is claim-based so that a shared PostgreSQL store (SPEC §11) fits behind it unchanged:
`claim_due` hands out watches with a fresh lease token, `save_polls` writes results fenced by that token,
and deliveries are claimed and finished the same way. Single-process stores (memory, SQLite) keep their due
index in memory and treat a claimed watch as leased until it is saved or `lease_s` has passed.

All times are epoch seconds supplied by the caller's clock. The shared PostgreSQL store is the exception:
replicas must agree on time, so it decides due times and lease expiries by the database's clock and
ignores the `now` of claims, counts, registrations and retries (see `watcher.store.postgres`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

from watcher.models import (
    Delivery,
    DeliveryUpdate,
    EndpointHealth,
    Event,
    Registration,
    SavedPoll,
    Source,
    Watch,
)


class RegisterResult(StrEnum):
    """What `register` did with one registration."""

    CREATED = "created"  # a new watch
    EXISTING = "existing"  # already watched (finished or not); the source was added, nothing else changed


@dataclass(slots=True, frozen=True)
class SyncResult:
    """What `sync_source` (or one `sync_source_range`) changed."""

    added: int
    removed: int
    waiting: int = 0  # ids that would have left the source, kept because removals were held back


def in_range(job_id: str, lo: str | None, hi: str | None) -> bool:
    """Whether `job_id` lies in the id range `(lo, hi]`; a None bound is open."""
    return (lo is None or job_id > lo) and (hi is None or job_id <= hi)


# A bound of a job-id range `(lo, hi]`; None is open. What a source's range is synced to.
Bound = str | None
Regs = Sequence[Registration]


def range_wanted(regs: Sequence[Registration], lo: Bound, hi: Bound) -> dict[str, Registration]:
    """The registrations of a `sync_source_range` by id (the first of an id wins), checked to lie in range."""
    wanted: dict[str, Registration] = {}
    for r in regs:
        if not in_range(r.job_id, lo, hi):
            raise ValueError(f"job id {r.job_id!r} outside the synced range ({lo!r}, {hi!r}]")
        wanted.setdefault(r.job_id, r)
    return wanted


@dataclass(slots=True, frozen=True)
class WatchQuery:
    """The filters of one `list_watches` call."""

    status: str | None
    limit: int
    cursor: str | None
    label: tuple[str, str] | None
    workspaces: tuple[str, ...] | None = None  # only watches of these (an API client's, SPEC §14)


@dataclass(slots=True, frozen=True)
class DeliveryQuery:
    """The filters of one `list_deliveries` call."""

    state: str | None
    webhook: str | None
    limit: int
    before: int | None
    job_id: str | None
    workspaces: tuple[str, ...] | None = None  # only deliveries of these workspaces' events


@dataclass(slots=True, frozen=True)
class WatchPage:
    """One page of `list_watches`; `next_cursor` is None on the last page."""

    watches: list[Watch]
    next_cursor: str | None


@dataclass(slots=True, frozen=True)
class StoreCounts:
    """Aggregates for the gauges; exact after a restart because they come from the store."""

    watched_by_status: dict[str, int]  # unfinished watches by last status, "unknown" before a poll
    pending_by_webhook: dict[str, int]
    dead_by_webhook: dict[str, int]
    oldest_pending_created_at: float | None
    quarantined: int = 0  # unfinished watches in quarantine (not in `watched_by_status`)


@dataclass(slots=True, frozen=True)
class JobTypeRow:
    """One job type's stored duration model (SPEC §12): an opaque, versioned blob the store never reads."""

    workspace: str
    name: str
    model: bytes


# How a store adds a delta to a stored model: (stored model or None for a new type, delta) -> new model.
MergeModel = Callable[[bytes | None, bytes], bytes]


@dataclass(slots=True, frozen=True)
class FailureNoted:
    """What `Store.note_failure` did: the watch's failure count now, and whether it is quarantined."""

    kept: bool  # False: the lease was lost (the watch was claimed again or deleted); nothing was written
    failures: int = 0
    quarantined: bool = False


@dataclass(slots=True, frozen=True)
class GroupClaim:
    """What `Store.claim_group` did for one webhook: the members it claimed under one lease, or, when it
    claimed none, when the open window of the waiting deliveries closes (None: none are waiting)."""

    members: list[Delivery]
    window_closes_at: float | None = None


@dataclass(slots=True, frozen=True)
class GroupPlan:
    """What a backend found among one webhook's claimable pair heads, for `pick_group` to decide on."""

    retry: tuple[int, float] | None  # (attempts, next_attempt_at) of the earliest due head retried before
    fresh_since: float | None  # the earliest `next_attempt_at` among the due heads never attempted


@dataclass(slots=True, frozen=True)
class GroupKey:
    """Which heads one group claim takes: those with `attempts`, and `next_attempt_at` equal to `at`
    (a group retried together) or, with `at` None, every due one (a fresh window that closed)."""

    attempts: int
    at: float | None


def pick_group(plan: GroupPlan, now: float, window_s: float) -> GroupKey | float | None:
    """The group to claim now, else when the open window closes (a float), else None (nothing waits).

    A group that failed together was written back with one update, so its members share their attempt
    count and retry time: they are claimed together again, whatever came in meanwhile (which waits in a
    window of its own). Never-attempted heads form a tumbling window that opens at the earliest of them and
    closes `window_s` later; then every one of them that is due goes.
    """
    if plan.retry is not None:
        return GroupKey(*plan.retry)
    if plan.fresh_since is None:
        return None
    closes = plan.fresh_since + window_s
    return GroupKey(0, None) if closes <= now else closes


class Store(ABC):
    """Durable state of the daemon: watches, their events (the outbox) and deliveries."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; safe to call twice."""

    @abstractmethod
    async def ping(self) -> bool:
        """True if the store answers (for `/readyz`)."""

    # -- watches --------------------------------------------------------------------------------------

    @abstractmethod
    async def restore(self, now: float, first_due: Callable[[Watch], float]) -> int:
        """Load every unfinished watch out of quarantine after a start and set its first due time.

        Returns how many unfinished watches there are. Undelivered deliveries need no restoring: they are
        claimable as soon as the store is open. A shared store (other replicas may be running) only
        reschedules watches that are already due and leaves the live leases of other replicas alone.
        """

    @abstractmethod
    async def register(self, regs: Sequence[Registration], now: float) -> list[RegisterResult]:
        """Add watches, idempotently: an id already present only gains the registration's source.

        A new watch is due at `now`. Results are in the order of `regs`.
        """

    async def sync_source(self, source: Source, regs: Sequence[Registration], now: float) -> SyncResult:
        """Make `source`'s set of watches equal to `regs` (the declarative watch-list file).

        Ids not yet watched are registered; watches that carry `source` but are not in `regs` lose it, and an
        unfinished watch left with no source is deleted (it stops being polled). This is
        `sync_source_range` over the whole id range: one rule for a small list and a streamed one.
        """
        return await self.sync_source_range(source, regs, None, None, now)

    @abstractmethod
    async def sync_source_range(
        self, source: Source, regs: Regs, lo: Bound, hi: Bound, now: float, *, remove: bool = True
    ) -> SyncResult:
        """Make `source`'s watches with an id in `(lo, hi]` (a None bound is open) equal to `regs`.

        Every registration must lie in the range (ValueError otherwise); the first of a repeated id wins.
        Ids of `regs` not carrying `source` join it (registered, or gaining the source); ids in the range
        that carry `source` but are not in `regs` leave it as `sync_source` says, or, with `remove=False`,
        stay and are only counted as `waiting`. One call is one short transaction, so a large list is synced
        range by range (in id order) without holding the store or the event loop for long.
        """

    @abstractmethod
    async def delete_watch(self, job_id: str) -> bool:
        """Forget a watch entirely (API DELETE); its undelivered deliveries stay. False if unknown."""

    @abstractmethod
    async def get_watch(self, job_id: str) -> Watch | None:
        """One watch, finished or not."""

    async def list_watches(
        self,
        *,
        status: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        label: tuple[str, str] | None = None,
        workspaces: Sequence[str] | None = None,
    ) -> WatchPage:
        """Watches in a stable order (by job id), optionally only those whose list status is `status`.

        The list status is `Watch.list_status` (in SQL `watcher.store.sql.LIST_STATUS_SQL`): final state,
        else "quarantined", else last status, else "unknown" (not polled successfully yet). `cursor` is the
        last job id of the previous page; `label` keeps watches whose labels map the key to exactly that
        value; `workspaces` keeps the watches of those workspaces.
        """
        only = None if workspaces is None else tuple(workspaces)
        return await self._list_watches(WatchQuery(status, limit, cursor, label, only))

    @abstractmethod
    async def _list_watches(self, query: WatchQuery) -> WatchPage:
        """`list_watches` as the backend runs it: the filters are the interface's, with their defaults."""

    @abstractmethod
    async def claim_due(self, now: float, limit: int, lease_s: float) -> list[Watch]:
        """Hand out up to `limit` unfinished, unquarantined watches due at `now`, earliest first, each with
        a new lease.

        A claimed watch is not handed out again until it is saved or its lease (`now + lease_s`) runs out.
        """

    @abstractmethod
    async def release(self, watches: Sequence[Watch]) -> None:
        """Give back claims that were never polled (a stopping scheduler's queue), ending their leases.

        Each watch is due again at the time it was due when claimed, so it keeps its place; a watch whose
        lease has already moved on (claimed again, saved, deleted) is left alone.
        """

    @abstractmethod
    async def next_due_at(self) -> float | None:
        """The earliest due time among unclaimed unfinished watches, None if there are none."""

    @abstractmethod
    async def count_due(self, now: float) -> int:
        """How many unclaimed unfinished watches are due at `now` (the scheduler backlog gauge)."""

    @abstractmethod
    async def save_polls(self, polls: Sequence[SavedPoll]) -> list[bool]:
        """Write each watch's new state and its events and deliveries in one transaction per call.

        Each write is fenced by the lease the watch was claimed with: False means the lease was lost (the
        watch was deleted or claimed again) and nothing of that item was written. An event whose id is
        already stored is skipped together with its deliveries (double detection yields one event).
        A saved unfinished watch is due again at `watch.next_poll_at`.
        """

    @abstractmethod
    async def note_failure(
        self, watch: Watch, reason: str, now: float, retry_at: float, quarantine_after: int
    ) -> FailureNoted:
        """Count one unexpected failure of the watch's handling (SPEC §16), fenced by its claim's lease.

        Only the count, the reason and the due time are written, never the state that failed to be
        handled, so this write succeeds where the failed one did not. Below `quarantine_after` failures
        the watch is due again at `retry_at`; at the limit it is quarantined at `now`: never claimed again
        until `release_quarantine`. A lost lease writes nothing (`kept` False).
        """

    @abstractmethod
    async def release_quarantine(self, job_id: str, now: float) -> bool:
        """Take a watch out of quarantine: failure count reset, due at `now`. False if not quarantined."""

    @abstractmethod
    async def purge_finished(self, before: float) -> int:
        """Delete finished watches whose `finished_at` is before `before`, with their events and deliveries.

        A watch with a delivery still pending stays (visible in the API) until the delivery is settled, and
        goes at the first purge after that: its events never outlive it, so nothing is left behind that no
        later purge would find."""

    # -- events and deliveries ------------------------------------------------------------------------

    @abstractmethod
    async def events_for(self, job_id: str) -> list[Event]:
        """Every stored event of a job, in the order they happened."""

    @abstractmethod
    async def claim_deliveries(
        self, now: float, limit: int, lease_s: float, exclude: Collection[str] = ()
    ) -> list[Delivery]:
        """Hand out up to `limit` pending deliveries due at `now`, each with a new lease.

        Only the oldest pending delivery of each (job, webhook) pair is eligible, so a pair's events go out
        in the order they happened; dead and delivered ones do not block. A claimed delivery is not handed
        out again until it is finished or its lease runs out. Deliveries to an endpoint in `exclude` (a
        webhook's name, a callback's `scheme://host:port`) are left where they are: their endpoint's
        breaker is open, or all its slots are busy.
        """

    @abstractmethod
    async def claim_group(
        self, webhook: str, now: float, window_s: float, limit: int, lease_s: float
    ) -> GroupClaim:
        """Claim one group of `webhook`'s deliveries (`group_window_s`, SPEC §15) under one new lease.

        Only pair heads are eligible, as in `claim_deliveries`, so a job's later event never joins a group
        before its earlier one is finished; which heads form the group is `pick_group`'s rule, at most
        `limit` of them, oldest first. A webhook whose endpoint is open is left alone. Nothing claimed:
        `window_closes_at` says when the waiting heads' window closes.
        """

    @abstractmethod
    async def finish_group(self, members: Sequence[Delivery], update: DeliveryUpdate) -> int:
        """Record one attempt's outcome on every member of a group, each fenced by its lease as in
        `finish_delivery`, in one transaction; how many were written."""

    @abstractmethod
    async def next_delivery_at(self) -> float | None:
        """The earliest `next_attempt_at` among unclaimed pending deliveries, None if there are none."""

    @abstractmethod
    async def finish_delivery(self, delivery: Delivery, update: DeliveryUpdate) -> bool:
        """Record an attempt's outcome, fenced by the delivery's lease; False if the lease was lost."""

    async def list_deliveries(
        self,
        *,
        state: str | None = None,
        webhook: str | None = None,
        limit: int = 100,
        before: int | None = None,
        job_id: str | None = None,
        workspaces: Sequence[str] | None = None,
    ) -> list[Delivery]:
        """Deliveries, newest (highest id) first, optionally filtered.

        `before` is the cursor of the next page: only deliveries whose id is lower (pass the last id of the
        previous page); `job_id` keeps the deliveries of one job's events; `workspaces` those of events of
        these workspaces.
        """
        only = None if workspaces is None else tuple(workspaces)
        return await self._list_deliveries(DeliveryQuery(state, webhook, limit, before, job_id, only))

    @abstractmethod
    async def _list_deliveries(self, query: DeliveryQuery) -> list[Delivery]:
        """`list_deliveries` as the backend runs it: the filters are the interface's, with their defaults."""

    @abstractmethod
    async def get_delivery(self, delivery_id: int) -> Delivery | None:
        """One delivery by id, whatever its state."""

    @abstractmethod
    async def retry_delivery(self, delivery_id: int, now: float) -> bool:
        """Put a dead delivery back to pending (attempts reset, due now, same event id); False if not dead."""

    @abstractmethod
    async def expire_deliveries(self, webhook: str, created_before: float, reason: str) -> int:
        """Make every unleased pending delivery of `webhook` created before `created_before` dead, with
        `reason` as its last error (`max_delivery_age_s`, SPEC §13); how many there were."""

    # -- endpoint health (circuit breakers, SPEC §13) ---------------------------------------------------

    @abstractmethod
    async def endpoints(self) -> list[EndpointHealth]:
        """Every stored breaker, by endpoint."""

    @abstractmethod
    async def put_endpoint(self, health: EndpointHealth) -> bool:
        """Write a breaker if nobody wrote it since it was read: compare-and-set on `health.version`.

        Version 0 inserts (False if the endpoint is stored already); any other version updates the row
        only while it still has that version. The stored version is then one more. False: re-read.
        """

    @abstractmethod
    async def recent_events(self, limit: int) -> list[Event]:
        """The `limit` most recently stored events across all jobs, newest first (the status page)."""

    @abstractmethod
    async def counts(self, on_snapshot: Callable[[], None] | None = None) -> StoreCounts:
        """Aggregates for the gauges, all from one read snapshot of the store.

        `on_snapshot` is called once that snapshot is fixed, before the aggregates are computed: what was
        committed before the call is counted, what commits after it is not (SPEC §16, consistent scrapes).
        """

    # -- job types (SPEC §12) ------------------------------------------------------------------------

    @abstractmethod
    async def load_job_types(self) -> list[JobTypeRow]:
        """Every stored job type's duration model, the most recently updated last."""

    @abstractmethod
    async def merge_job_types(
        self, deltas: Sequence[JobTypeRow], merge: MergeModel, now: float, max_types: int
    ) -> list[JobTypeRow]:
        """Add each delta to its type's stored model, `merge(stored, delta)`, and return the merged rows.

        A shared store merges under the row's lock, so two replicas adding at once both count: nothing a
        concurrent update wrote is overwritten. Types beyond `max_types`, least recently updated first, are
        dropped. One transaction per call: the caller batches what it learnt.
        """

    @abstractmethod
    async def watch_counts(self) -> dict[str, int]:
        """How many watches there are per list status, finished ones kept for `retention_s` included.

        The keys are what `list_watches(status=...)` filters on: the final state of a finished watch, else
        its last status, else "unknown".
        """
