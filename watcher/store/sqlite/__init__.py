"""The SQLite store (`store.url = "sqlite:///…"`): one file, one process."""

from watcher.store.sqlite.connection import migrations, sqlite_path
from watcher.store.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore", "migrations", "sqlite_path"]
