-- Placeholder for schema version 3, which another branch adds (adaptive polling); drop this file when that
-- branch's 0003 is merged. It changes nothing.
SELECT 1;
