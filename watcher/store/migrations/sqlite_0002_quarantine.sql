-- Schema version 2: quarantine (SPEC §16). A watch whose handling raised unexpected exceptions
-- `failures` times is quarantined: kept, listed, never polled until released. Additive only: a version-1
-- watcher ignores the columns (and would poll a quarantined watch again during a rolling upgrade).

ALTER TABLE watches ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE watches ADD COLUMN quarantined_at REAL;
ALTER TABLE watches ADD COLUMN quarantine_reason TEXT;

-- The quarantined gauge and the API's status=quarantined list.
CREATE INDEX watches_quarantined ON watches (job_id) WHERE quarantined_at IS NOT NULL;
