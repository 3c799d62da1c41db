-- Schema version 4 (PostgreSQL): per-watch callbacks and endpoint health (SPEC §13). Additive only: an
-- older replica ignores the columns and the table (it would not deliver callbacks, and would not respect a
-- breaker), so upgrade every replica before enabling callbacks.

-- The callback a watch was registered with ({"url", "events", "headers"}); NULL: none.
ALTER TABLE watches ADD COLUMN callback jsonb;
-- A callback delivery's own copy of the callback, so a deleted watch's events still reach it.
ALTER TABLE deliveries ADD COLUMN callback jsonb;
-- The endpoint a delivery goes to: NULL for a configured webhook (its name is the endpoint), a callback
-- URL's scheme, host and port for a callback.
ALTER TABLE deliveries ADD COLUMN endpoint text;

-- One circuit breaker per endpoint. `version` makes every change a compare-and-set, so two replicas never
-- both take the probe of an open endpoint.
CREATE TABLE endpoints (
    endpoint             text PRIMARY KEY,
    webhook              text NOT NULL,
    state                text NOT NULL DEFAULT 'closed',
    consecutive_failures integer NOT NULL DEFAULT 0,
    open_until           double precision,
    open_s               double precision,
    last_error           text,
    version              bigint NOT NULL DEFAULT 0
);

-- The max_delivery_age_s sweep: pending deliveries of one webhook by age (pending rows only).
CREATE INDEX deliveries_pending_age ON deliveries (webhook, created_at) WHERE state = 'pending';
