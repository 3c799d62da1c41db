"""Stores: the interface in `base`, implementations per backend, chosen by `store.url`."""

from __future__ import annotations

from watcher.errors import StoreError
from watcher.store.base import RegisterResult, Store, SyncResult, WatchPage

__all__ = ["RegisterResult", "Store", "StoreError", "SyncResult", "WatchPage", "open_store"]


def open_store(url: str) -> Store:
    """Build (not yet open) the store that `url` names: `memory://`, `sqlite:///path`, `postgresql://…`."""
    if url.startswith("memory:"):
        from watcher.store.memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:"):
        from watcher.store.sqlite import SQLiteStore, sqlite_path

        return SQLiteStore(sqlite_path(url))
    if url.startswith(("postgresql:", "postgres:")):
        from watcher.store.postgres import PostgresStore

        return PostgresStore(url)
    scheme = url.split(":", 1)[0]
    raise StoreError(
        f"store.url: unsupported scheme {scheme!r} (use sqlite:///path, postgresql://… or memory://)"
    )
