-- Schema version 5 (PostgreSQL): autovacuum for the watch table's update churn.
-- Every poll updates its watch twice (the claim's lease, the save's next due time) and neither update can
-- be HOT, since next_poll_at is indexed: at 500 polls/s that is about 1,000 dead row versions a second.
-- PostgreSQL's default waits for 20 % of the table to be dead (200,000 rows at a million watches); these
-- vacuum after 1 % plus 10,000 rows instead. A VACUUM of a million-watch table took 0.13-0.26 s in the
-- measurement behind this (docs: PostgreSQL, "At a million watches"). Storage parameters only: additive,
-- and an older replica reading the table is unaffected.
ALTER TABLE watches SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_analyze_scale_factor = 0.05
);
