-- Schema version 3 (PostgreSQL): job types (SPEC §12). What the replicas learnt about how long jobs of each
-- type take: one row per (workspace, upstream `name`), the duration model as an opaque versioned blob
-- (DDSketches; see watcher.polling.adaptive.model). Replicas add what they learnt to a row under its row
-- lock (SELECT … FOR UPDATE), never overwrite it. Additive only: a version-2 replica ignores the table.

CREATE TABLE job_types (
    workspace text NOT NULL,
    name text NOT NULL,
    model bytea NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (workspace, name)
);

-- Dropping the least recently updated types beyond `adaptive_max_types`.
CREATE INDEX job_types_updated ON job_types (updated_at);
