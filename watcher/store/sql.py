"""SQL that both backends speak: the list-status rule, the pair-head rule of the outbox, the aggregates.

Valid in SQLite and PostgreSQL alike, without parameters; each backend's own statements are in its `sql`
module.
"""

from __future__ import annotations

# The Python rule of `Watch.list_status` in SQL: what `list_watches` filters on and `watch_counts` groups by.
LIST_STATUS_SQL = (
    "coalesce(final, CASE WHEN quarantined_at IS NOT NULL THEN 'quarantined' END, status, 'unknown')"
)
# `d` is the oldest pending delivery of its (job, webhook) pair: the only one of the pair that may go out.
PAIR_HEAD = (
    "NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.state = 'pending'"
    " AND p.job_id = d.job_id AND p.webhook = d.webhook AND p.id < d.id)"
)
# `d`'s endpoint is not open in the store: its breaker is closed, or its open period (or its probe's lease)
# has ended. The one parameter is now. Every replica's claims respect a breaker the moment it is stored.
ENDPOINT_NOT_OPEN = (
    "NOT EXISTS (SELECT 1 FROM endpoints b WHERE b.endpoint = coalesce(d.endpoint, d.webhook)"
    " AND b.state <> 'closed' AND b.open_until > {now})"
)
# Finished watches to purge: finished before `{before}` (the one parameter), and settled: no delivery of
# theirs still pending (`deliveries_pair` finds one). Their events then go with them, and none is orphaned.
FINISHED_SETTLED = (
    "SELECT w.job_id FROM watches w WHERE w.final IS NOT NULL AND w.finished_at < {before}"
    " AND NOT EXISTS (SELECT 1 FROM deliveries k WHERE k.job_id = w.job_id AND k.state = 'pending')"
)

# -- aggregates (`Store.counts`, `Store.watch_counts`) ------------------------------------------------------

WATCHED_BY_STATUS = (
    "SELECT coalesce(status, 'unknown') AS s, count(*) AS n FROM watches"
    " WHERE final IS NULL AND quarantined_at IS NULL GROUP BY 1"
)
QUARANTINED_COUNT = "SELECT count(*) FROM watches WHERE quarantined_at IS NOT NULL AND final IS NULL"
DELIVERIES_BY_WEBHOOK = (
    "SELECT webhook, state, count(*) AS n FROM deliveries WHERE state IN ('pending', 'dead')"
    " GROUP BY webhook, state"
)
OLDEST_PENDING = "SELECT min(created_at) FROM deliveries WHERE state = 'pending'"
WATCH_COUNTS = f"SELECT {LIST_STATUS_SQL} AS s, count(*) AS n FROM watches GROUP BY 1"  # noqa: S608
