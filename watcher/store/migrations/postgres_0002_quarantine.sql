-- Schema version 2 (PostgreSQL): quarantine (SPEC §16). A watch whose handling raised unexpected exceptions
-- `failures` times is quarantined: kept, listed, never claimed until released. Additive only (expand): a
-- version-1 replica ignores the columns and its claims still use watches_due, so during a rolling upgrade it
-- may poll a quarantined watch; the version-2 claim uses watches_due_live. watches_due is dropped by a later
-- release (contract), once no version-1 replica is left.

ALTER TABLE watches ADD COLUMN failures integer NOT NULL DEFAULT 0;
ALTER TABLE watches ADD COLUMN quarantined_at double precision;
ALTER TABLE watches ADD COLUMN quarantine_reason text;

-- claim_due, next_due_at, count_due: unfinished watches out of quarantine by due time.
CREATE INDEX watches_due_live ON watches (next_poll_at) WHERE final IS NULL AND quarantined_at IS NULL;
-- The quarantined gauge and the API's status=quarantined list.
CREATE INDEX watches_quarantined ON watches (job_id) WHERE quarantined_at IS NOT NULL;
