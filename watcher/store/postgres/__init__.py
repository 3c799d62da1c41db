"""The PostgreSQL store (`store.url = "postgresql://…"`): shared by every replica (SPEC §11)."""

from watcher.store.postgres.conn import migrations, parse_url
from watcher.store.postgres.store import PostgresStore

__all__ = ["PostgresStore", "migrations", "parse_url"]
