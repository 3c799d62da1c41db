"""PostgreSQL plumbing for the shared store: the URL, the connection pool, versioned migrations, and running
a store call on a pooled connection (`PgPool`: in a transaction, again after a deadlock or a lost connection).

`store.url = "postgresql://user@host:5432/db?schema=watcher"`: every query parameter asyncpg knows
(`sslmode`, `connect_timeout`, …) passes through; `schema` is ours and puts the tables in that schema (created
if missing), so one database can hold several independent watchers or test runs. Migrations run inside one
transaction under `pg_advisory_xact_lock`, so replicas starting together migrate once and the others wait
for it, then find nothing to do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from watcher import strictjson
from watcher.clock import Clock
from watcher.errors import StoreError
from watcher.store.faults import StoreFault, StoreOutage
from watcher.store.schema import packaged_migrations

T = TypeVar("T")

APPLICATION_NAME = "job-watcher"
# A store call is tried this often (pausing a little longer each time) after a deadlock or a lost connection.
RETRIES = 3
RETRY_PAUSE_S = 0.05
CLOSE_TIMEOUT_S = 5.0
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


def columns(rows: Iterable[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as `width` column lists, the shape `unnest($1::text[], $2::…[], …)` takes (empty when no rows)."""
    cols: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return cols


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
    return packaged_migrations("postgres")


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


def _drop_if_broken(conn: asyncpg.Connection, e: BaseException) -> None:
    """Close a connection that an outage left unusable, so the pool replaces it instead of handing it out."""
    if not is_outage(e):
        return
    try:
        if not conn.is_closed():
            conn.terminate()
    except asyncpg.InterfaceError:
        pass  # asyncpg already gave a connection that closed under it back to the pool


class PgPool:
    """The store's connection pool: opened with the migrations applied, closed without waiting forever, and
    the two ways a store call gets a connection (`run`, `connection`), every error a `StoreError`."""

    def __init__(self, target: PgTarget, clock: Clock) -> None:
        self.target = target
        self._clock = clock
        self._pool: asyncpg.Pool | None = None

    @property
    def is_open(self) -> bool:
        """True between `open` and `close`."""
        return self._pool is not None

    async def open(self) -> int:
        """Create the pool and apply pending migrations (once, whichever replica gets the lock first);
        returns the schema version."""
        pool = await create_pool(self.target)
        try:
            version, _ = await migrate(pool, self.target)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        return version

    async def close(self) -> None:
        """Close the pool; safe to call twice. A connection that does not come back in time (an outage left
        it hanging) is closed without ceremony."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            pool.terminate()

    async def ping(self) -> bool:
        """True if the database answers a trivial query within a few seconds."""
        if self._pool is None:
            return False
        try:
            async with self._pool.acquire(timeout=5.0) as conn:
                return bool(await conn.fetchval("SELECT 1", timeout=5.0) == 1)
        except DB_ERRORS:
            return False

    def _pool_or_raise(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreOutage(f"store at {self.target.where} is not open")
        return self._pool

    async def run(self, work: Callable[[asyncpg.Connection], Awaitable[T]], *, tx: bool = True) -> T:
        """Run `work` in one transaction, again after a deadlock or a lost connection; errors → StoreError.

        `tx=False` is for work that is one statement: atomic by itself, it saves the BEGIN and COMMIT trips.
        A connection that broke is closed before it goes back to the pool, so the next attempt (and every
        later call) gets a new one: the pool recovers by itself once the server is back. What is still out
        after the last attempt is a StoreOutage, for the caller's loop to wait out.
        """
        pool = self._pool_or_raise()
        for attempt in range(RETRIES):
            try:
                async with pool.acquire() as conn:
                    try:
                        if not tx:
                            return await work(conn)
                        async with conn.transaction():
                            return await work(conn)
                    except DB_ERRORS as e:
                        _drop_if_broken(conn, e)
                        raise
            except RETRYABLE as e:
                if attempt == RETRIES - 1:
                    raise store_error(self.target, e) from e
                await self._clock.sleep(RETRY_PAUSE_S * (attempt + 1))
            except DB_ERRORS as e:
                if not is_outage(e) or attempt == RETRIES - 1:
                    raise store_error(self.target, e) from e
                await self._clock.sleep(RETRY_PAUSE_S * (attempt + 1))
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for a single read; errors become StoreError (StoreOutage for an outage)."""
        pool = self._pool_or_raise()
        try:
            async with pool.acquire() as conn:
                try:
                    yield conn
                except DB_ERRORS as e:
                    _drop_if_broken(conn, e)
                    raise
        except DB_ERRORS as e:
            raise store_error(self.target, e) from e
