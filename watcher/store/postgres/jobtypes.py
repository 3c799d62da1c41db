"""The PostgreSQL store's job types (SPEC §12): the duration models every replica learns, one row each.

Replicas merge, never overwrite: each delta is added to the row it read `FOR UPDATE` (a new type's row is
inserted first, `ON CONFLICT DO NOTHING`, so two replicas meeting a new type both end up merging under the
lock). Types are locked in key order, so two replicas' batches never deadlock each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from watcher.store.base import JobTypeRow, MergeModel, Store
from watcher.store.postgres.conn import PgPool

_LOCK = "SELECT model FROM job_types WHERE workspace = $1 AND name = $2 FOR UPDATE"
_INSERT = (
    "INSERT INTO job_types (workspace, name, model, updated_at) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (workspace, name) DO NOTHING RETURNING 1"
)
_UPDATE = "UPDATE job_types SET model = $3, updated_at = $4 WHERE workspace = $1 AND name = $2"
_PRUNE = (
    "DELETE FROM job_types WHERE (workspace, name) IN (SELECT workspace, name FROM job_types"
    " ORDER BY updated_at DESC OFFSET $1)"
)


class PgJobTypes(Store):
    """The job-types part of `PostgresStore`, which owns the pool."""

    pool: PgPool

    async def load_job_types(self) -> list[JobTypeRow]:
        """Every stored model, the most recently updated last."""
        async with self.pool.connection() as conn:
            rows = await conn.fetch("SELECT workspace, name, model FROM job_types ORDER BY updated_at")
        return [JobTypeRow(r["workspace"], r["name"], bytes(r["model"])) for r in rows]

    async def merge_job_types(
        self, deltas: Sequence[JobTypeRow], merge: MergeModel, now: float, max_types: int
    ) -> list[JobTypeRow]:
        """Merge each delta into its row under the row lock, in one transaction; prune beyond `max_types`."""
        ordered = sorted(deltas, key=lambda d: (d.workspace, d.name))

        async def work(conn: asyncpg.Connection) -> list[JobTypeRow]:
            out = []
            for d in ordered:
                row = await conn.fetchrow(_LOCK, d.workspace, d.name)
                if row is None:
                    model = merge(None, d.model)
                    if await conn.fetchval(_INSERT, d.workspace, d.name, model, now) is not None:
                        out.append(JobTypeRow(d.workspace, d.name, model))
                        continue
                    row = await conn.fetchrow(_LOCK, d.workspace, d.name)  # another replica inserted it
                model = merge(bytes(row["model"]), d.model)
                await conn.execute(_UPDATE, d.workspace, d.name, model, now)
                out.append(JobTypeRow(d.workspace, d.name, model))
            if await conn.fetchval("SELECT count(*) FROM job_types") > max(1, max_types):
                await conn.execute(_PRUNE, max(1, max_types))
            return out

        return await self.pool.run(work)
