"""The SQLite store's job types (SPEC §12): the duration models the adaptive polling learns, one row each.

One process writes the file, so a merge is a read and a write in one `BEGIN IMMEDIATE` transaction.
"""

from __future__ import annotations

from collections.abc import Sequence

from watcher.store.base import JobTypeRow, MergeModel, Store
from watcher.store.sqlite.connection import Connections, select

_PRUNE = (
    "DELETE FROM job_types WHERE rowid IN"
    " (SELECT rowid FROM job_types ORDER BY updated_at DESC LIMIT -1 OFFSET ?)"
)


class SQLiteJobTypes(Store):
    """The job-types part of `SQLiteStore`, which owns the connections."""

    connections: Connections

    async def load_job_types(self) -> list[JobTypeRow]:
        """Every stored model, the most recently updated last."""
        async with self.connections.read() as db:
            rows = await select(db, "SELECT workspace, name, model FROM job_types ORDER BY updated_at")
        return [JobTypeRow(r[0], r[1], bytes(r[2])) for r in rows]

    async def merge_job_types(
        self, deltas: Sequence[JobTypeRow], merge: MergeModel, now: float, max_types: int
    ) -> list[JobTypeRow]:
        """Read, merge and write each type's model in one transaction; drop the stalest beyond `max_types`."""
        out = []
        async with self.connections.write() as db:
            for d in deltas:
                rows = await select(
                    db, "SELECT model FROM job_types WHERE workspace = ? AND name = ?", (d.workspace, d.name)
                )
                model = merge(bytes(rows[0][0]) if rows else None, d.model)
                await db.execute(
                    "INSERT INTO job_types (workspace, name, model, updated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (workspace, name) DO UPDATE SET model = excluded.model,"
                    " updated_at = excluded.updated_at",
                    (d.workspace, d.name, model, now),
                )
                out.append(JobTypeRow(d.workspace, d.name, model))
            await db.execute(_PRUNE, (max(1, max_types),))
        return out
