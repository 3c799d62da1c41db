"""The stores a benchmark runs on: a SQLite file per daemon, or a fresh schema in the `--store` PostgreSQL.

Each PostgreSQL store is a new schema `watcher_bench_<name>_<random>` in the database `--store` names (the
store's own `?schema=` parameter), created by the store's migration when first opened and dropped when its
scenario ends, so a run leaves the database as it found it. The bench reads the shared store from outside
in one place only (`leases`): to see which watches a killed replica was holding.
"""

from __future__ import annotations

import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from watcher.errors import StoreError
from watcher.store.postgres.conn import parse_url

SCHEMA_PREFIX = "watcher_bench_"
_CONNECT_TIMEOUT_S = 10.0
# Schemas made by `fresh_schema_url` and not dropped yet, as (store URL, schema), oldest first.
_made: list[tuple[str, str]] = []
# Every schema a run used, for the JSON report.
used: list[str] = []


def is_postgres(store: str) -> bool:
    """True if `--store` names a PostgreSQL database rather than `sqlite`."""
    return store.startswith(("postgresql://", "postgres://"))


def describe(store: str) -> str:
    """The store for humans: `sqlite`, or `postgresql at host:port/db` (never the user or password)."""
    return f"postgresql at {parse_url(store).where}" if is_postgres(store) else store


def mask_password(text: str) -> str:
    """A PostgreSQL URL (or `--store=URL`) with its password replaced by `***`; anything else unchanged."""
    prefix, _, url = text.partition("=") if text.startswith("--store=") else ("", "", text)
    parts = urlsplit(url)
    if not is_postgres(url) or parts.password is None:
        return text
    netloc = f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}"
    return f"{prefix}{'=' if prefix else ''}{urlunsplit((parts.scheme, netloc, *parts[2:]))}"


def with_schema(url: str, schema: str) -> str:
    """`url` with its `schema` parameter set to `schema` (any other parameter kept)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "schema"]
    return urlunsplit((*parts[:3], urlencode([*query, ("schema", schema)]), ""))


def fresh_schema_url(store: str, name: str) -> str:
    """A store URL naming a new, unused schema for `name`; `drop_fresh_schemas` removes it."""
    slug = "".join(c if c.isalnum() else "_" for c in name.lower())[:30]
    schema = f"{SCHEMA_PREFIX}{slug}_{uuid.uuid4().hex[:10]}"
    _made.append((store, schema))
    used.append(schema)
    return with_schema(store, schema)


async def _connect(url: str) -> asyncpg.Connection:
    target = parse_url(url)
    try:
        return await asyncpg.connect(
            target.dsn,
            timeout=_CONNECT_TIMEOUT_S,
            server_settings={"search_path": target.schema} if target.schema else None,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise StoreError(f"cannot connect to PostgreSQL at {target.where}: {reason}") from e


async def server_version(store: str) -> str:
    """The server's version string; a one-line StoreError if it cannot be reached."""
    conn = await _connect(store)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def drop_fresh_schemas() -> list[str]:
    """Drop every schema `fresh_schema_url` made; returns the ones that could not be dropped, with why."""
    failed = []
    while _made:
        store, schema = _made.pop()
        try:
            conn = await _connect(store)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()
        except (StoreError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e:
            failed.append(f"{schema}: {e}")
    return failed


async def all_overdue(url: str, now: float) -> None:
    """Make every unfinished watch of a PostgreSQL store due before `now` and unclaimed, in one statement
    (nothing for SQLite, whose restore always takes every watch).

    A shared PostgreSQL store's restore leaves watches that are not yet due alone (another replica may be
    polling them), so between two benchmark daemons with different intervals the later one would inherit
    the earlier one's schedule; after this its restore spreads them all by its own `initial_interval_s`.
    Daemons already running on the store (paused, with nothing claimed) simply find every watch due.
    """
    if not is_postgres(url):
        return
    conn = await _connect(url)
    try:
        await conn.execute(
            "UPDATE watches SET next_poll_at = $1, lease = NULL"
            " WHERE final IS NULL AND quarantined_at IS NULL",
            now - 1.0,
        )
    except asyncpg.PostgresError as e:
        raise StoreError(f"cannot make the watches of {parse_url(url).where} due: {e}") from e
    finally:
        await conn.close()


async def leases(url: str) -> dict[str, int]:
    """Job id -> lease token of every unfinished watch under a claim, read straight from the shared store."""
    conn = await _connect(url)
    try:
        rows = await conn.fetch("SELECT job_id, lease FROM watches WHERE lease IS NOT NULL AND final IS NULL")
    except asyncpg.PostgresError as e:
        raise StoreError(f"cannot read the leases of {parse_url(url).where}: {e}") from e
    finally:
        await conn.close()
    return {str(r["job_id"]): int(r["lease"]) for r in rows}


async def vacuum_watches(url: str) -> None:
    """`VACUUM (ANALYZE) watches` in a PostgreSQL store; nothing for a SQLite store.

    A benchmark rewrites every watch in bulk outside any daemon's steady state (building the store, making
    every watch overdue, a daemon's restore): each rewrite leaves a dead row version per watch, a million
    at a million watches. A running deployment's autovacuum clears them in the background (schema version
    5 tunes it for the watch table), but not within a benchmark's seconds, and not at all on a server with
    `autovacuum = off`; until then every index walk pays for them. So the bench vacuums after such steps,
    and its windows time the daemon on a table as a long-running deployment has it.
    """
    if not is_postgres(url):
        return
    conn = await _connect(url)
    try:
        await conn.execute("VACUUM (ANALYZE) watches")
    except asyncpg.PostgresError as e:
        raise StoreError(f"cannot vacuum the watch table of {parse_url(url).where}: {e}") from e
    finally:
        await conn.close()
