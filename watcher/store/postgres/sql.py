"""The SQL of the PostgreSQL store, one constant per statement (asyncpg prepares and caches each), and rows
as models (`watch_row`, `delivery_row`, `event_row`).

JSON values travel as text and are cast in SQL: asyncpg would read a list inside an array as a dimension.

Conventions: a nullable `$n::float8` "now" parameter is the caller's clock when given and the database's
clock when NULL (`_NOW`), so the shared and the single-process modes run the same statements. Batches travel
as arrays through `unnest`, one round trip per batch. Claims lock with `FOR UPDATE SKIP LOCKED` inside a
MATERIALIZED CTE so the planner cannot fold the pick into the UPDATE and re-run it per row.
"""

from __future__ import annotations

from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from watcher.models import Callback, Delivery, DeliveryState, Event, Watch
from watcher.store.sql import ENDPOINT_NOT_OPEN, FINISHED_SETTLED, LIST_STATUS_SQL, PAIR_HEAD

_NOW = "extract(epoch from now())::float8"

WATCH_FIELDS = (
    "job_id", "workspace", "sources", "labels", "webhooks", "max_watch_s", "registered_at", "status", "final",
    "polls", "streak", "errors", "not_found", "next_poll_at", "last_polled_at", "finished_at", "last_error",
    "upstream_updated_at", "lease", "failures", "quarantined_at", "quarantine_reason", "callback",
)  # fmt: skip
WATCH_COLS = ", ".join(WATCH_FIELDS)
# The polling state a save writes, in the order of SAVE_WATCHES' arrays after job_id and lease.
SAVE_FIELDS = (
    "job_id", "lease", "status", "final", "polls", "streak", "errors", "not_found", "last_polled_at",
    "finished_at", "last_error", "upstream_updated_at",
)  # fmt: skip

_EVENT_COLS = (
    "e.id AS e_id, e.job_id AS e_job_id, e.workspace AS e_workspace, e.type AS e_type,"
    " e.created_at AS e_created_at, e.payload AS e_payload"
)
EVENT_SELECT = f"SELECT {_EVENT_COLS} FROM events e"  # noqa: S608
_DELIVERY_COLS = (
    "d.id, d.webhook, d.state, d.attempts, d.next_attempt_at, d.created_at, d.last_error, d.delivered_at,"
    f" d.lease, d.callback, {_EVENT_COLS}"
)
NOW = _NOW  # the database's now, in epoch seconds
DELIVERY_SELECT = f"SELECT {_DELIVERY_COLS} FROM deliveries d JOIN events e ON e.id = d.event_id"  # noqa: S608

# Scoped to the schema, so independent watchers sharing a database never wait on each other.
LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('job-watcher:' || current_schema() || ':' || $1, 0))"
TRY_LOCK = (
    "SELECT pg_try_advisory_xact_lock(hashtextextended('job-watcher:' || current_schema() || ':' || $1, 0))"
)

# -- watches ----------------------------------------------------------------------------------------------

RESTORE_PAGE = f"""
SELECT {WATCH_COLS} FROM watches
WHERE final IS NULL AND quarantined_at IS NULL AND job_id > $3
  AND (NOT $2::bool OR next_poll_at <= coalesce($1::float8, {_NOW}))
ORDER BY job_id LIMIT $4
FOR UPDATE SKIP LOCKED"""  # noqa: S608

RESTORE_SET = f"""
UPDATE watches w SET next_poll_at = coalesce(u.base, {_NOW}) + u.off, lease = NULL
FROM unnest($1::text[], $2::float8[], $3::float8[]) AS u(job_id, base, off)
WHERE w.job_id = u.job_id"""  # noqa: S608

REGISTER_INSERT = f"""
INSERT INTO watches (job_id, workspace, sources, labels, webhooks, max_watch_s, registered_at, next_poll_at,
    callback)
SELECT u.job_id, u.workspace, u.sources, u.labels::jsonb, u.webhooks::jsonb, u.max_watch_s, n.t, n.t,
    u.callback::jsonb
FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::float8[], $8::text[])
     WITH ORDINALITY AS u(job_id, workspace, sources, labels, webhooks, max_watch_s, callback, ord),
     (SELECT coalesce($7::float8, {_NOW}) AS t) AS n
ORDER BY u.ord
ON CONFLICT (job_id) DO NOTHING
RETURNING job_id"""  # noqa: S608

REGISTER_MERGE = """
UPDATE watches w SET sources = w.sources | u.bits
FROM unnest($1::text[], $2::int[]) AS u(job_id, bits)
WHERE w.job_id = u.job_id"""

SOURCE_MEMBERS = "SELECT job_id, sources, final FROM watches WHERE sources & $1 <> 0"


def source_members(lo: str | None, hi: str | None) -> tuple[str, list[str]]:
    """The members of source `$1` with an id in `(lo, hi]` (None: open), as a primary-key range scan."""
    sql, args = SOURCE_MEMBERS, []
    for op, bound in ((">", lo), ("<=", hi)):
        if bound is not None:
            args.append(bound)
            sql += f" AND job_id {op} ${len(args) + 1}"
    return sql, args


SOURCE_DROP = "UPDATE watches SET sources = sources & $2 WHERE job_id = ANY($1::text[])"
DELETE_WATCHES = "DELETE FROM watches WHERE job_id = ANY($1::text[])"
FINISHED_BEFORE = FINISHED_SETTLED.format(before="$1")

# Events of the jobs (and their deliveries) go unless one of their deliveries is in a `$2` state; deliveries
# first, then the events left without any.
DROP_EVENT_DELIVERIES = """
DELETE FROM deliveries WHERE event_id IN (
    SELECT e.id FROM events e WHERE e.job_id = ANY($1::text[])
    AND NOT EXISTS (SELECT 1 FROM deliveries k WHERE k.event_id = e.id AND k.state = ANY($2::text[])))"""
DROP_EVENTS = """
DELETE FROM events e WHERE e.job_id = ANY($1::text[])
AND NOT EXISTS (SELECT 1 FROM deliveries k WHERE k.event_id = e.id)"""

LIST_WATCHES = f"""
SELECT {WATCH_COLS} FROM watches
WHERE job_id > $1
  AND ($2::text IS NULL OR {LIST_STATUS_SQL} = $2)
  AND ($3::jsonb IS NULL OR labels @> $3)
  AND ($5::text[] IS NULL OR workspace = ANY($5))
ORDER BY job_id LIMIT $4"""  # noqa: S608

CLAIM_WATCHES = f"""
WITH due AS MATERIALIZED (
    SELECT job_id, next_poll_at FROM watches
    WHERE final IS NULL AND quarantined_at IS NULL AND next_poll_at <= coalesce($1::float8, {_NOW})
    ORDER BY next_poll_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), token AS MATERIALIZED (SELECT nextval('lease_seq') AS lease)
UPDATE watches w
SET next_poll_at = coalesce($1::float8, {_NOW}) + $3::float8, lease = token.lease
FROM due, token
WHERE w.job_id = due.job_id
RETURNING {", ".join("w." + c for c in WATCH_FIELDS)}, due.next_poll_at AS due"""  # noqa: S608

# A claim given back unpolled: due again when it was due before, if the lease is still the claim's.
RELEASE_WATCHES = """
UPDATE watches w SET next_poll_at = u.due, lease = NULL
FROM unnest($1::text[], $2::bigint[], $3::float8[]) AS u(job_id, lease, due)
WHERE w.job_id = u.job_id AND w.lease = u.lease"""

COUNT_DUE = f"""
SELECT count(*) FROM watches
WHERE final IS NULL AND quarantined_at IS NULL AND next_poll_at <= coalesce($1::float8, {_NOW})"""  # noqa: S608

NEXT_DUE = "SELECT min(next_poll_at) FROM watches WHERE final IS NULL AND quarantined_at IS NULL"

# One unexpected failure of a claimed watch's handling, fenced like a save; only the failure columns and the
# due time are written. At the limit the watch is quarantined (out of every claim) at the given time.
NOTE_FAILURE = f"""
UPDATE watches SET failures = failures + 1, quarantine_reason = $3,
    next_poll_at = coalesce($4::float8, {_NOW}) + $5::float8,
    quarantined_at = CASE WHEN failures + 1 >= $6 THEN coalesce($7::float8, {_NOW}) END, lease = NULL
WHERE job_id = $1 AND lease = $2
RETURNING failures"""  # noqa: S608

RELEASE_QUARANTINE = f"""
UPDATE watches SET quarantined_at = NULL, failures = 0, next_poll_at = coalesce($2::float8, {_NOW}),
    lease = NULL
WHERE job_id = $1 AND quarantined_at IS NOT NULL
RETURNING job_id"""  # noqa: S608

# Fenced by (job_id, lease): a row whose lease changed (claimed again, taken back) or that is gone is not
# written, and the RETURNING list tells the caller which items were kept.
SAVE_WATCHES = f"""
UPDATE watches w SET
    status = u.status, final = u.final, polls = u.polls, streak = u.streak, errors = u.errors,
    not_found = u.not_found, last_polled_at = u.last_polled_at, finished_at = u.finished_at,
    last_error = u.last_error, upstream_updated_at = u.upstream_updated_at,
    next_poll_at = coalesce(u.base, {_NOW}) + u.off, lease = NULL
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::int[], $6::int[], $7::int[], $8::int[],
            $9::float8[], $10::float8[], $11::text[], $12::text[], $13::float8[], $14::float8[])
     AS u(job_id, lease, status, final, polls, streak, errors, not_found, last_polled_at, finished_at,
          last_error, upstream_updated_at, base, off)
WHERE w.job_id = u.job_id AND w.lease = u.lease
RETURNING w.job_id, u.lease"""  # noqa: S608

# -- events and deliveries --------------------------------------------------------------------------------

INSERT_EVENTS = """
INSERT INTO events (id, job_id, workspace, type, created_at, payload)
SELECT u.id, u.job_id, u.workspace, u.type, u.created_at, u.payload::json
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[])
     WITH ORDINALITY AS u(id, job_id, workspace, type, created_at, payload, ord)
ORDER BY u.ord
ON CONFLICT (id) DO NOTHING
RETURNING id"""

INSERT_DELIVERIES = f"""
INSERT INTO deliveries (event_id, job_id, webhook, state, attempts, next_attempt_at, created_at, callback,
    endpoint)
SELECT u.event_id, u.job_id, u.webhook, 'pending', 0, coalesce(u.due, {_NOW}), u.created_at,
    u.callback::jsonb, u.endpoint
FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[], $6::text[], $7::text[])
     WITH ORDINALITY AS u(event_id, job_id, webhook, due, created_at, callback, endpoint, ord)
ORDER BY u.ord"""  # noqa: S608


def lease_deliveries(where: str, limit: str, due_until: str) -> str:
    """A claim of deliveries: the first `limit` matching `where` by due time, locked (`SKIP LOCKED`), leased
    under one new token until `due_until`, and returned with their events. The due time doubles as the lease
    expiry, so a crashed replica's claim becomes due again by itself."""
    return f"""
WITH due AS MATERIALIZED (
    SELECT d.id, d.next_attempt_at FROM deliveries d
    WHERE {where}
    ORDER BY d.next_attempt_at, d.id
    LIMIT {limit}
    FOR UPDATE OF d SKIP LOCKED
), token AS MATERIALIZED (SELECT nextval('lease_seq') AS lease),
claimed AS (
    UPDATE deliveries d
    SET next_attempt_at = {due_until}, lease = token.lease
    FROM due, token
    WHERE d.id = due.id
    RETURNING d.*, due.next_attempt_at AS due
)
SELECT {_DELIVERY_COLS.replace("d.", "c.")}, c.due
FROM claimed c JOIN events e ON e.id = c.event_id"""  # noqa: S608


CLAIM_DELIVERIES = lease_deliveries(
    f"""d.state = 'pending' AND d.next_attempt_at <= coalesce($1::float8, {_NOW}) AND {PAIR_HEAD}
      AND coalesce(d.endpoint, d.webhook) <> ALL($4::text[])
      AND {ENDPOINT_NOT_OPEN.format(now=f"coalesce($1::float8, {_NOW})")}""",
    "$2",
    f"coalesce($1::float8, {_NOW}) + $3::float8",
)

NEXT_DELIVERY = f"SELECT min(d.next_attempt_at) FROM deliveries d WHERE d.state = 'pending' AND {PAIR_HEAD}"  # noqa: S608

FINISH_DELIVERY = f"""
UPDATE deliveries SET state = $1, attempts = $2, next_attempt_at = coalesce($3::float8, {_NOW}) + $4::float8,
    last_error = $5, delivered_at = $6, lease = NULL
WHERE id = $7 AND state = 'pending' AND lease = $8
RETURNING id"""  # noqa: S608

LIST_DELIVERIES = f"""
{DELIVERY_SELECT}
WHERE ($1::text IS NULL OR d.state = $1) AND ($2::text IS NULL OR d.webhook = $2)
  AND ($3::bigint IS NULL OR d.id < $3) AND ($4::text IS NULL OR d.job_id = $4)
  AND ($6::text[] IS NULL OR e.workspace = ANY($6))
ORDER BY d.id DESC LIMIT $5"""

RETRY_DELIVERY = f"""
UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = coalesce($1::float8, {_NOW}),
    delivered_at = NULL, lease = NULL
WHERE id = $2 AND state = 'dead'
RETURNING id"""  # noqa: S608


# The columns of `WATCH_COLS` that are `Watch` fields as they come (the JSON list and the lease are not).
_WATCH_AS_IS = tuple(f for f in WATCH_FIELDS if f not in ("webhooks", "lease", "callback"))


def callback_of(value: Any) -> Callback | None:
    """A stored callback (jsonb, decoded)."""
    return None if value is None else Callback.from_dict(value)


def watch_row(r: asyncpg.Record) -> Watch:
    """A watch from a row of `WATCH_COLS`."""
    webhooks = None if r["webhooks"] is None else tuple(r["webhooks"])
    return Watch(
        **{f: r[f] for f in _WATCH_AS_IS},
        webhooks=webhooks,
        lease=r["lease"] or 0,
        callback=callback_of(r["callback"]),
    )


def event_row(r: asyncpg.Record) -> Event:
    """An event from the `e_`-prefixed columns of `EVENT_SELECT` or `DELIVERY_SELECT`."""
    return Event(r["e_id"], r["e_job_id"], r["e_workspace"], r["e_type"], r["e_created_at"], r["e_payload"])


def delivery_row(r: asyncpg.Record) -> Delivery:
    """A delivery with its event from a row of `DELIVERY_SELECT`."""
    return Delivery(
        id=r["id"],
        event=event_row(r),
        webhook=r["webhook"],
        state=DeliveryState(r["state"]),
        attempts=r["attempts"],
        next_attempt_at=r["next_attempt_at"],
        created_at=r["created_at"],
        last_error=r["last_error"],
        delivered_at=r["delivered_at"],
        lease=r["lease"] or 0,
        callback=callback_of(r["callback"]),
    )
