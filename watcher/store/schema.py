"""The packaged schema migrations: one numbered series per backend, `<backend>_<NNNN>_<what>.sql` in
`watcher/store/migrations/` (shipped as package data). Each backend applies its series in order, each
version once: SQLite by `user_version`, PostgreSQL in its `schema_migrations` table.
"""

from __future__ import annotations

from importlib import resources
from typing import Literal

from watcher.errors import StoreError

Backend = Literal["sqlite", "postgres"]
_NAMES: dict[Backend, str] = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


def packaged_migrations(backend: Backend) -> list[tuple[int, str]]:
    """The packaged migrations of `backend` as `(version, sql)`, in the order they apply."""
    found = []
    for res in resources.files("watcher.store.migrations").iterdir():
        name = res.name
        if name.startswith(f"{backend}_") and name.endswith(".sql"):
            found.append((int(name.split("_")[1].split(".")[0]), res.read_text(encoding="utf-8")))
    found.sort()
    if [v for v, _ in found] != list(range(1, len(found) + 1)):
        raise StoreError(
            f"packaged {_NAMES[backend]} migrations are not numbered 1..n: {[v for v, _ in found]}"
        )
    return found
