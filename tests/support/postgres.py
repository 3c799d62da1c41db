"""The local PostgreSQL for tests: a fresh schema per test, dropped afterwards.

`WATCHER_TEST_POSTGRES_URL` names the server (default: the CI one, trust auth on 127.0.0.1:5432). When it
cannot be reached the test is skipped with the reason, except under `WATCHER_TEST_REQUIRE_POSTGRES=1` (CI),
where it fails: the PostgreSQL tests must never be skipped silently there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg  # type: ignore[import-untyped]
import pytest

PG_URL = os.environ.get("WATCHER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def _unreachable() -> str | None:
    """Why the test server cannot be used, or None if it answers."""
    try:
        conn = await asyncpg.connect(PG_URL, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        return f"{type(e).__name__}: {e}"
    await conn.close()
    return None


async def require_postgres() -> None:
    """Skip (or, in CI, fail) unless the test PostgreSQL answers."""
    reason = await _unreachable()
    if reason is None:
        return
    message = f"PostgreSQL at {PG_URL.split('@')[-1]} is unreachable ({reason})"
    if os.environ.get("WATCHER_TEST_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{message}; WATCHER_TEST_REQUIRE_POSTGRES=1 forbids skipping")
    pytest.skip(message)


async def drop_schema(schema: str) -> None:
    """Drop a test schema and everything in it."""
    conn = await asyncpg.connect(PG_URL, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@asynccontextmanager
async def pg_schema(prefix: str = "t") -> AsyncIterator[str]:
    """A store URL pointing at a new schema (created by the store's migration), dropped on exit."""
    await require_postgres()
    schema = f"wt_{prefix}_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}schema={schema}"
    finally:
        await drop_schema(schema)
