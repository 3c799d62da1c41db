"""The SQLite store's SQL: column lists, the statements shared by several methods, and rows <-> models.

Bound parameters everywhere; the only text put into a statement is a column list or a run of `?` marks.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from watcher import strictjson
from watcher.models import CALLBACK, Callback, Delivery, DeliveryState, Event, Watch
from watcher.store.sql import ENDPOINT_NOT_OPEN, PAIR_HEAD

T = TypeVar("T")

# Bound `IN (...)` lists well under SQLite's host-parameter limit (32766 since 3.32, 999 before).
CHUNK = 500

WATCH_COLS = (
    "job_id, workspace, sources, labels, webhooks, max_watch_s, registered_at, status, final, polls, streak,"
    " errors, not_found, next_poll_at, last_polled_at, finished_at, last_error, upstream_updated_at,"
    " failures, quarantined_at, quarantine_reason, callback"
)
DELIVERY_COLS = (
    "d.id, d.webhook, d.state, d.attempts, d.next_attempt_at, d.created_at, d.last_error, d.delivered_at,"
    " d.lease, e.id, e.job_id, e.workspace, e.type, e.created_at, e.payload, d.callback"
)
SAVE_WATCH = (
    "UPDATE watches SET status = ?, final = ?, polls = ?, streak = ?, errors = ?, not_found = ?,"
    " next_poll_at = ?, last_polled_at = ?, finished_at = ?, last_error = ?, upstream_updated_at = ?"
    " WHERE job_id = ?"
)


def chunks(items: Sequence[T]) -> Iterable[Sequence[T]]:
    """`items` in slices of at most `CHUNK`, for `IN (...)` lists."""
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def marks(n: int) -> str:
    """`n` comma-separated `?` marks."""
    return ",".join("?" * n)


def dumps(value: Any) -> str:
    """Strict JSON text whatever it is given: no NaN, no lone surrogate."""
    return strictjson.dumps(value)


def watch_row(row: Sequence[Any]) -> Watch:
    """A watch from a `WATCH_COLS` row; built positionally and without parsing the usual empty labels and
    absent webhooks, since a claim builds one per poll."""
    labels, webhooks = row[3], row[4]
    return Watch(
        row[0], row[1], row[2], row[6],
        {} if labels == "{}" else json.loads(labels),
        None if webhooks is None else tuple(json.loads(webhooks)),
        row[5], row[7], row[8], row[9], row[10], row[11], row[12], row[13], row[14], row[15], row[16],
        row[17], 0, row[18], row[19], row[20], callback_of(row[21]),
    )  # fmt: skip


def callback_of(text: str | None) -> Callback | None:
    """A stored callback column."""
    return None if text is None else Callback.from_dict(json.loads(text))


def event_row(row: Sequence[Any]) -> Event:
    return Event(
        id=row[0], job_id=row[1], workspace=row[2], type=row[3], created_at=row[4], payload=json.loads(row[5])
    )


def delivery_row(row: Sequence[Any]) -> Delivery:
    return Delivery(
        id=row[0],
        webhook=row[1],
        state=DeliveryState(row[2]),
        attempts=row[3],
        next_attempt_at=row[4],
        created_at=row[5],
        last_error=row[6],
        delivered_at=row[7],
        lease=row[8] or 0,
        event=event_row(row[9:]),
        callback=callback_of(row[15]),
    )


def save_row(w: Watch) -> tuple[Any, ...]:
    return (
        w.status, w.final, w.polls, w.streak, w.errors, w.not_found, w.next_poll_at, w.last_polled_at,
        w.finished_at, w.last_error, w.upstream_updated_at, w.job_id,
    )  # fmt: skip


def insert_events(
    db: sqlite3.Connection, events: dict[str, tuple[Event, tuple[str, ...], Callback | None]]
) -> None:
    """Events not stored yet, each with one pending delivery per webhook it is routed to."""
    ids = list(events)
    stored: set[str] = set()
    for chunk in chunks(ids):
        sql = f"SELECT id FROM events WHERE id IN ({marks(len(chunk))})"  # noqa: S608
        stored.update(r[0] for r in db.execute(sql, chunk).fetchall())
    new = [events[i] for i in ids if i not in stored]
    callbacks = {e.id: _callback_columns(cb) for e, _, cb in new}
    if not new:
        return
    db.executemany(
        "INSERT OR IGNORE INTO events (id, job_id, workspace, type, created_at, payload)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(e.id, e.job_id, e.workspace, e.type, e.created_at, dumps(e.payload)) for e, _, _ in new],
    )
    db.executemany(
        "INSERT INTO deliveries (event_id, job_id, webhook, state, attempts, next_attempt_at, created_at,"
        " callback, endpoint) VALUES (?, ?, ?, 'pending', 0, ?, ?, ?, ?)",
        [
            (
                e.id,
                e.job_id,
                name,
                e.created_at,
                e.created_at,
                *(callbacks[e.id] if name == CALLBACK else NO_CB),
            )
            for e, hooks, _ in new
            for name in hooks
        ],
    )


NO_CB = (None, None)


def _callback_columns(callback: Callback | None) -> tuple[str | None, str | None]:
    """The `callback` and `endpoint` columns of a callback delivery."""
    return NO_CB if callback is None else (dumps(callback.to_dict()), callback.endpoint)


# -- the outbox: events and deliveries ----------------------------------------------------------------------

EVENT_SELECT = "SELECT id, job_id, workspace, type, created_at, payload FROM events"
DELIVERY_SELECT = f"SELECT {DELIVERY_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id"  # noqa: S608
CLAIMABLE_DELIVERIES = (
    f"{DELIVERY_SELECT} WHERE d.state = 'pending' AND d.next_attempt_at <= ?"
    f" AND (d.lease_until IS NULL OR d.lease_until <= ?) AND {PAIR_HEAD}"
    f" AND {ENDPOINT_NOT_OPEN.format(now='?')}"
    " ORDER BY d.next_attempt_at, d.id LIMIT ?"
)


def claimable_deliveries(excluded: int) -> str:
    """CLAIMABLE_DELIVERIES, leaving out `excluded` endpoints (bound as parameters before the limit)."""
    if not excluded:
        return CLAIMABLE_DELIVERIES
    head, _, tail = CLAIMABLE_DELIVERIES.partition(" ORDER BY ")
    return f"{head} AND coalesce(d.endpoint, d.webhook) NOT IN ({marks(excluded)}) ORDER BY {tail}"


# The earliest due unleased pair head, and the earliest lease expiry of a leased one.
NEXT_DELIVERY = (
    "SELECT (SELECT d.next_attempt_at FROM deliveries d WHERE d.state = 'pending'"  # noqa: S608
    f" AND d.lease IS NULL AND {PAIR_HEAD} ORDER BY d.next_attempt_at, d.id LIMIT 1),"
    " (SELECT min(max(d.next_attempt_at, d.lease_until)) FROM deliveries d"
    f" WHERE d.lease IS NOT NULL AND d.state = 'pending' AND {PAIR_HEAD})"
)
FINISH_DELIVERY = (
    "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?,"
    " delivered_at = ?, lease = NULL, lease_until = NULL"
    " WHERE id = ? AND state = 'pending' AND lease = ?"
)
RETRY_DELIVERY = (
    "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
    " delivered_at = NULL, lease = NULL, lease_until = NULL WHERE id = ? AND state = 'dead'"
)
