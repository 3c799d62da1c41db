-- Schema version 1 (PostgreSQL): watches, the event outbox and per-webhook deliveries.
-- Times are epoch seconds (double precision) so that they compare with the daemon's floats; every lease and
-- due decision reads the database clock (extract(epoch from now())), never a replica's.

-- One fencing token per claim, unique across replicas.
CREATE SEQUENCE lease_seq;

CREATE TABLE watches (
    job_id              text PRIMARY KEY,
    workspace           text NOT NULL,
    sources             integer NOT NULL,
    labels              jsonb NOT NULL DEFAULT '{}',
    webhooks            jsonb,                      -- list of names, NULL: every matching webhook
    max_watch_s         double precision,
    registered_at       double precision NOT NULL,
    status              text,
    final               text,
    polls               integer NOT NULL DEFAULT 0,
    streak              integer NOT NULL DEFAULT 0,
    errors              integer NOT NULL DEFAULT 0,
    not_found           integer NOT NULL DEFAULT 0,
    -- The due time, and while claimed the lease expiry: a claim moves it to now() + lease_s.
    next_poll_at        double precision NOT NULL,
    last_polled_at      double precision,
    finished_at         double precision,
    last_error          text,
    upstream_updated_at text,
    lease               bigint                      -- the token of the live claim, NULL when unclaimed
);

-- claim_due, next_due_at, count_due: unfinished watches by due time (exactly the claim's predicate).
CREATE INDEX watches_due ON watches (next_poll_at) WHERE final IS NULL;
-- purge_finished: finished watches by age.
CREATE INDEX watches_finished ON watches (finished_at) WHERE final IS NOT NULL;

CREATE TABLE events (
    seq        bigserial PRIMARY KEY,
    id         text NOT NULL UNIQUE,
    job_id     text NOT NULL,
    workspace  text NOT NULL,
    type       text NOT NULL,
    created_at double precision NOT NULL,
    payload    json NOT NULL                        -- json, not jsonb: the upstream body keeps its key order
);

-- events_for and purge: a job's events in the order they happened.
CREATE INDEX events_job ON events (job_id, seq);

CREATE TABLE deliveries (
    id              bigserial PRIMARY KEY,
    event_id        text NOT NULL REFERENCES events (id),
    job_id          text NOT NULL,
    webhook         text NOT NULL,
    state           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    -- Due time of the next attempt, and while claimed the lease expiry (as for watches).
    next_attempt_at double precision NOT NULL,
    created_at      double precision NOT NULL,
    last_error      text,
    delivered_at    double precision,
    lease           bigint
);

-- Deleting an event checks its deliveries (foreign key) and purge looks for pending ones.
CREATE INDEX deliveries_event ON deliveries (event_id, state);
-- claim_deliveries walks due pending rows in order...
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, id) WHERE state = 'pending';
-- ...and keeps only the oldest pending row of each (job, webhook) pair.
CREATE INDEX deliveries_pair ON deliveries (job_id, webhook, id) WHERE state = 'pending';
-- The dead gauge and the API's dead list.
CREATE INDEX deliveries_dead ON deliveries (webhook) WHERE state = 'dead';
-- The API's per-job delivery list.
CREATE INDEX deliveries_job ON deliveries (job_id, id);
-- list_watches(label=...): containment of one key/value pair.
CREATE INDEX watches_labels ON watches USING gin (labels jsonb_path_ops);
