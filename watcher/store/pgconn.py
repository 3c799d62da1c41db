"""PostgreSQL plumbing for the shared store: the URL, the connection pool and versioned migrations.

`store.url = "postgresql://user@host:5432/db?schema=watcher"`: every query parameter asyncpg knows
(`sslmode`, `connect_timeout`, …) passes through; `schema` is ours and puts the tables in that schema (created
if missing), so one database can hold several independent watchers or test runs. Migrations run inside one
transaction under `pg_advisory_xact_lock`, so replicas starting together migrate once and the others wait
for it, then find nothing to do.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from watcher import strictjson
from watcher.errors import StoreError
from watcher.store.faults import StoreFault, StoreOutage

APPLICATION_NAME = "job-watcher"
POOL_MAX_SIZE = 10
COMMAND_TIMEOUT_S = 30.0
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Errors after which the whole transaction can simply run again at once: nothing of it was committed.
RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
# The server, or the way to it, is out: down, restarting, refusing, out of connections or disk, a standby
# after a failover, or the connection lost mid-call (asyncpg's InternalClientError about a state switch is
# its protocol state machine after the socket broke). The same call works again once the server is back;
# a transaction whose commit was cut off is safe to run again because every write is idempotent or fenced
# by its lease.
_OUTAGES = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.IdleSessionTimeoutError,
    asyncpg.InsufficientResourcesError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.InternalClientError,
)
# Everything a query can raise that is the database's business (the rest is a bug of ours).
DB_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def is_outage(e: BaseException) -> bool:
    """True if `e` means the database as a whole cannot be used right now (see `_OUTAGES`)."""
    if isinstance(e, _OUTAGES):
        return True
    # Interface errors other than bad data are about the connection or the pool: closed, closing, or still
    # busy with an operation that will never finish.
    return isinstance(e, asyncpg.InterfaceError) and not isinstance(e, asyncpg.DataError)


def _fault(e: BaseException) -> StoreFault:
    if isinstance(e, asyncpg.DiskFullError):
        return StoreFault.DISK_FULL
    if isinstance(e, asyncpg.ReadOnlySQLTransactionError):
        return StoreFault.READ_ONLY
    return StoreFault.UNREACHABLE


def classify(message: str, e: BaseException) -> StoreError:
    """`message` as a StoreOutage if `e` is an outage, else as a StoreError (this request failed)."""
    if is_outage(e):
        return StoreOutage(message, _fault(e))
    return StoreError(message)


@dataclass(frozen=True, slots=True)
class PgTarget:
    """A parsed `store.url`: what asyncpg connects to and the schema the tables live in."""

    dsn: str = ""
    schema: str | None = None
    where: str = ""  # host:port/database, for messages: never the user or the password

    def __repr__(self) -> str:
        return f"PgTarget({self.where!r}, schema={self.schema!r})"


def parse_url(url: str) -> PgTarget:
    """Split our `schema` parameter off a `postgresql://` URL; the error never repeats the URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise StoreError("store.url: a PostgreSQL URL starts with postgresql://")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    schema = schemas[-1] if schemas else None
    if schema is not None and not _SCHEMA_RE.fullmatch(schema):
        raise StoreError("store.url: schema must be 1-63 characters of a-z 0-9 _, not starting with a digit")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, rest, ""))
    try:
        port = parts.port or 5432
    except ValueError:
        raise StoreError("store.url: the port is not a number") from None
    where = f"{parts.hostname or 'localhost'}:{port}{parts.path or '/'}"
    return PgTarget(dsn, schema, where)


def dumps(value: Any) -> str:
    """Compact strict JSON text, as the SQLite store writes it: PostgreSQL refuses NaN and lone surrogates."""
    return strictjson.dumps(value)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON columns come and go as Python objects.
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(target: PgTarget) -> asyncpg.Pool:
    """A pool whose every connection uses `target.schema`; asyncpg prepares and caches each statement."""
    # The pool reconnects its `min_size` floor by itself and logs each failed attempt as a warning with a
    # traceback, every second or so of an outage; the daemon reports the outage once (`store.unavailable`).
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
    settings = {"application_name": APPLICATION_NAME}
    if target.schema is not None:
        settings["search_path"] = target.schema
    try:
        pool = await asyncpg.create_pool(
            target.dsn,
            min_size=1,
            max_size=POOL_MAX_SIZE,
            command_timeout=COMMAND_TIMEOUT_S,
            server_settings=settings,
            init=_init_connection,
        )
    except DB_ERRORS as e:
        raise classify(f"cannot connect to PostgreSQL at {target.where}: {_reason(e)}", e) from e
    return pool


def _reason(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def migrations() -> list[tuple[int, str]]:
    """The packaged PostgreSQL migrations as `(version, sql)`, in the order they apply."""
    found = []
    for res in resources.files("watcher.store.migrations").iterdir():
        name = res.name
        if name.startswith("postgres_") and name.endswith(".sql"):
            found.append((int(name.split("_")[1].split(".")[0]), res.read_text(encoding="utf-8")))
    found.sort()
    if [v for v, _ in found] != list(range(1, len(found) + 1)):
        raise StoreError(f"packaged PostgreSQL migrations are not numbered 1..n: {[v for v, _ in found]}")
    return found


async def migrate(pool: asyncpg.Pool, target: PgTarget) -> tuple[int, list[int]]:
    """Apply every pending migration in one transaction; returns the schema version and what was applied.

    The advisory lock is keyed by schema, so watchers in other schemas of the same database do not wait.
    """
    known = migrations()
    latest = known[-1][0] if known else 0
    try:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('job-watcher:migrate:' || $1, 0))",
                target.schema or "",
            )
            if target.schema is not None:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{target.schema}"')
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))
            if current > latest:
                raise StoreError(
                    f"store at {target.where} has schema version {current}, newer than the {latest} this"
                    " watcher knows; upgrade job-watcher or point store.url at another database"
                )
            applied = []
            for version, sql in known:
                if version > current:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                    applied.append(version)
            return max(current, latest), applied
    except DB_ERRORS as e:
        raise classify(f"cannot migrate the store at {target.where}: {_reason(e)}", e) from e


def store_error(target: PgTarget, e: BaseException) -> StoreError:
    """A one-line StoreError (a StoreOutage for an outage) for a failed query, naming the database but no
    credentials."""
    if is_outage(e):
        return StoreOutage(f"store at {target.where} is unavailable: {_reason(e)}", _fault(e))
    return StoreError(f"store at {target.where}: {_reason(e)}")


def as_list(value: Any) -> tuple[str, ...] | None:
    """A JSON list column as a tuple (None stays None)."""
    return None if value is None else tuple(value)
