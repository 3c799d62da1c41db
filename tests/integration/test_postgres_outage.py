"""The PostgreSQL store during an outage: outages are `StoreUnavailable`, the pool recovers by itself, and a
save re-run after its commit answer was lost is fenced (issue 12 item 3).

The store reaches the real server through a loopback proxy the test cuts, restores and resets; the server
itself is never stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.integration.test_store_contract import jid, polled, reg
from tests.support.eventually import eventually
from tests.support.postgres import PG_URL, pg_schema
from tests.support.tcp_proxy import TcpProxy
from watcher.errors import StoreUnavailable
from watcher.store.faults import StoreFault, fault_of
from watcher.store.postgres import PostgresStore
from watcher.store.postgres.conn import is_outage, parse_url

pytestmark = pytest.mark.postgres
NOW = 1_700_000_000.0


async def _running(query: str) -> bool:
    """True once the server runs `query` (seen from a connection of our own, not through the proxy)."""
    conn = await asyncpg.connect(PG_URL)
    try:
        sql = "SELECT count(*) FROM pg_stat_activity WHERE query = $1 AND state = 'active'"
        return bool(await conn.fetchval(sql, query))
    finally:
        await conn.close()


@pytest.fixture
async def proxied() -> AsyncIterator[tuple[PostgresStore, TcpProxy]]:
    """An open store (own schema, test clock taken as given) whose connections go through a proxy."""
    async with pg_schema("pgout") as url:
        host, _, port = parse_url(url).where.split("/")[0].rpartition(":")
        proxy = TcpProxy(host, int(port))
        await proxy.start()
        store = PostgresStore(url.replace(f"@{host}:{port}/", f"@127.0.0.1:{proxy.port}/"), shared=False)
        try:
            await store.open()
            yield store, proxy
        finally:
            await proxy.restore()
            await store.close()
            await proxy.close()


async def test_calls_during_an_outage_are_unavailable_and_the_pool_recovers(
    proxied: tuple[PostgresStore, TcpProxy],
) -> None:
    """With the database cut off, every kind of call raises StoreUnavailable (kind unreachable) naming the
    host but no credentials; once it is back, the same store works again without being reopened."""
    store, proxy = proxied
    await store.register([reg(1)], NOW)
    await proxy.cut()
    calls = {
        "claim_due": store.claim_due(NOW + 1, 10, 30.0),
        "next_due_at": store.next_due_at(),
        "counts": store.counts(),
        "get_watch": store.get_watch(jid(1)),
        "register": store.register([reg(2)], NOW),
        "claim_deliveries": store.claim_deliveries(NOW, 10, 30.0),
    }
    for name, call in calls.items():
        with pytest.raises(StoreUnavailable) as exc:
            await call
        assert fault_of(exc.value) is StoreFault.UNREACHABLE, name
        assert f"127.0.0.1:{proxy.port}/test" in str(exc.value) and "postgres@" not in str(exc.value), name
    assert not await store.ping()
    await proxy.restore()
    (w,) = await store.claim_due(NOW + 1, 10, 30.0)
    assert w.job_id == jid(1)
    assert await store.ping()


async def test_a_connection_reset_mid_query_is_unavailable_and_replaced(
    proxied: tuple[PostgresStore, TcpProxy],
) -> None:
    """A connection reset while a statement runs fails that call as StoreUnavailable; the broken connection
    is dropped and the next call gets a new one."""
    store, proxy = proxied
    accepted = proxy.accepted

    async def slow_read() -> None:
        async with store.pool.connection() as conn:
            await conn.fetchval("SELECT pg_sleep(2)")

    call = asyncio.create_task(slow_read())
    await eventually(lambda: _running("SELECT pg_sleep(2)"), 10, "the slow read running")
    await proxy.reset_all()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(call, 10)
    assert await store.count_due(NOW) == 0
    assert proxy.accepted > accepted  # a new connection replaced the broken one


async def test_open_while_the_database_is_unreachable_is_unavailable() -> None:
    """Opening against a database that refuses connections is an outage to wait out, not a bad config."""
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    await proxy.cut()
    store = PostgresStore(f"postgresql://u:s3cr3t-pw@127.0.0.1:{proxy.port}/db?connect_timeout=2")
    with pytest.raises(StoreUnavailable) as exc:
        await store.open()
    assert f"127.0.0.1:{proxy.port}/db" in str(exc.value) and "s3cr3t" not in str(exc.value)
    await proxy.close()


async def test_a_save_run_again_after_its_commit_is_fenced(proxied: tuple[PostgresStore, TcpProxy]) -> None:
    """When the answer to a COMMIT is lost, the store (or the scheduler) runs the same save again. The
    first one took the lease off the watch, so the second writes nothing: the event and its delivery exist
    once, and the save reports the lease as lost instead of writing twice."""
    store, _ = proxied
    await store.register([reg(1)], NOW)
    (w,) = await store.claim_due(NOW, 10, 30.0)
    saved = polled(w, "success", NOW)
    (new,) = saved.events
    assert await store.save_polls([saved]) == [True]
    assert await store.save_polls([saved]) == [False]
    assert [e.id for e in await store.events_for(w.job_id)] == [new.event.id]
    assert [d.event.id for d in await store.list_deliveries()] == [new.event.id]


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (asyncpg.InternalClientError("cannot switch to state 12; another operation is in progress"), True),
        (asyncpg.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"), True),
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), True),
        (asyncpg.TooManyConnectionsError("sorry, too many clients already"), True),
        (asyncpg.InterfaceError("pool is closing"), True),
        (ConnectionRefusedError(111, "Connect call failed"), True),
        (TimeoutError(), True),
        (asyncpg.UniqueViolationError("duplicate key"), False),
        (asyncpg.DataError("invalid input for query argument $1"), False),
        (asyncpg.QueryCanceledError("canceling statement due to statement timeout"), False),
        (asyncpg.UntranslatableCharacterError("unsupported Unicode escape sequence"), False),
    ],
)
def test_outages_and_request_errors_are_told_apart(error: BaseException, outage: bool) -> None:
    """Connection-level and server-availability errors are outages; what is about one statement is not."""
    assert is_outage(error) is outage
