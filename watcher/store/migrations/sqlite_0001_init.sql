-- Schema version 1: watches, the event outbox and per-webhook deliveries.
-- Times are epoch seconds (REAL); JSON columns hold compact JSON text.

CREATE TABLE watches (
    job_id              TEXT PRIMARY KEY,
    workspace           TEXT NOT NULL,
    sources             INTEGER NOT NULL,
    labels              TEXT NOT NULL DEFAULT '{}',
    webhooks            TEXT,              -- JSON list, NULL: every matching webhook
    max_watch_s         REAL,
    registered_at       REAL NOT NULL,
    status              TEXT,
    final               TEXT,
    polls               INTEGER NOT NULL DEFAULT 0,
    streak              INTEGER NOT NULL DEFAULT 0,
    errors              INTEGER NOT NULL DEFAULT 0,
    not_found           INTEGER NOT NULL DEFAULT 0,
    next_poll_at        REAL NOT NULL,
    last_polled_at      REAL,
    finished_at         REAL,
    last_error          TEXT,
    upstream_updated_at TEXT
) WITHOUT ROWID;

-- purge_finished: finished watches by age.
CREATE INDEX watches_finished ON watches (finished_at) WHERE final IS NOT NULL;

CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    job_id     TEXT NOT NULL,
    workspace  TEXT NOT NULL,
    type       TEXT NOT NULL,
    created_at REAL NOT NULL,
    payload    TEXT NOT NULL
);

-- events_for and purge: a job's events in the order they happened.
CREATE INDEX events_job ON events (job_id, seq);

CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL REFERENCES events (id),
    job_id          TEXT NOT NULL,
    webhook         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    created_at      REAL NOT NULL,
    last_error      TEXT,
    delivered_at    REAL,
    lease           INTEGER,
    lease_until     REAL
);

-- Deleting an event checks its deliveries (foreign key) and purge looks for pending ones.
CREATE INDEX deliveries_event ON deliveries (event_id, state);
-- claim_deliveries walks due pending rows in order...
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, id) WHERE state = 'pending';
-- ...and keeps only the oldest pending row of each (job, webhook) pair.
CREATE INDEX deliveries_pair ON deliveries (job_id, webhook, id) WHERE state = 'pending';
-- The dead gauge and the API's dead list.
CREATE INDEX deliveries_dead ON deliveries (webhook) WHERE state = 'dead';
-- In-flight leases: next_delivery_at and clearing leases at open.
CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE lease IS NOT NULL;
