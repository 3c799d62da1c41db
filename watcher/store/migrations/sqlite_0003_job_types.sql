-- Schema version 3: job types (SPEC §12). What the daemon learnt about how long jobs of each type take: one
-- row per (workspace, upstream `name`), the duration model as an opaque versioned blob (DDSketches; see
-- watcher.polling.adaptive.model). Additive only: an older watcher ignores the table.

CREATE TABLE job_types (
    workspace TEXT NOT NULL,
    name TEXT NOT NULL,
    model BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (workspace, name)
);

-- Dropping the least recently updated types beyond `adaptive_max_types`.
CREATE INDEX job_types_updated ON job_types (updated_at);
