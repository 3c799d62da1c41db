-- Schema version 4: per-watch callbacks and endpoint health (SPEC §13). Additive only: an older watcher
-- ignores the columns and the table (it would not deliver callbacks, and would not respect a breaker).

-- The callback a watch was registered with (JSON {"url", "events", "headers"}); NULL: none.
ALTER TABLE watches ADD COLUMN callback TEXT;
-- A callback delivery's own copy of the callback, so a deleted watch's events still reach it.
ALTER TABLE deliveries ADD COLUMN callback TEXT;
-- The endpoint a delivery goes to: NULL for a configured webhook (its name is the endpoint), a callback
-- URL's scheme, host and port for a callback.
ALTER TABLE deliveries ADD COLUMN endpoint TEXT;

-- One circuit breaker per endpoint. `version` makes every change a compare-and-set, so two workers (or
-- replicas) never both take the probe of an open endpoint.
CREATE TABLE endpoints (
    endpoint             TEXT PRIMARY KEY,
    webhook              TEXT NOT NULL,
    state                TEXT NOT NULL DEFAULT 'closed',
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    open_until           REAL,
    open_s               REAL,
    last_error           TEXT,
    version              INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- The max_delivery_age_s sweep: pending deliveries of one webhook by age (pending rows only).
CREATE INDEX deliveries_pending_age ON deliveries (webhook, created_at) WHERE state = 'pending';
