"""Everything the daemon writes is strict JSON (RFC 8259), even for a payload nobody sanitised (issue 12).

The upstream client sanitises bodies as it reads them; these tests feed the writers directly with what
lenient code lets through (NaN, Infinity, lone surrogates in values and keys, an int too long to print):
the stores' JSON columns and the signed webhook body are the second line of defence, and each must come
out as strict JSON, checked by the test receiver's independent strict parser.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.support.postgres import pg_schema
from tests.support.standard_webhooks import TestReceiver, strict_json
from watcher.clock import SystemClock
from watcher.delivery.target import WebhookTarget
from watcher.delivery.webhook import WebhookSender
from watcher.models import (
    Delivery,
    DeliveryOutcome,
    DeliveryState,
    Event,
    NewEvent,
    Registration,
    SavedPoll,
    Source,
)
from watcher.store.base import Store
from watcher.store.postgres import PostgresStore
from watcher.store.postgres.conn import parse_url
from watcher.store.sqlite import SQLiteStore

SECRET = "whsec_" + base64.b64encode(b"strict-json-test-key-0001").decode()
JOB = "5135bfe3-b2c7-41f3-a44f-f4b58e7384df"


def poisoned_payload() -> dict[str, Any]:
    """A `standard` event body whose job holds what strict JSON cannot carry."""
    job = {
        "id": JOB,
        "status": "failed",
        "updatedAt": "2026-04-01T10:18:42.000Z",
        "error": "\ud800 oops",
        "note\udc00": "\udfff",
        "progress": math.nan,
        "eta_s": math.inf,
        "floor": -math.inf,
        "nested": [{"deep": [math.nan, "ok \U0001f600"]}],
    }
    data = {"job": job, "previous_status": "active", "workspace": "acme", "labels": {}, "polls": 3}
    return {"type": "job.failed", "timestamp": "2026-04-01T10:18:43.000Z", "data": data}


SANITISED_JOB = {
    "id": JOB,
    "status": "failed",
    "updatedAt": "2026-04-01T10:18:42.000Z",
    "error": "\ufffd oops",
    "note\ufffd": "\ufffd",
    "progress": None,
    "eta_s": None,
    "floor": None,
    "nested": [{"deep": [None, "ok \U0001f600"]}],
}


@contextlib.asynccontextmanager
async def open_store(kind: str, tmp_path: Path) -> AsyncIterator[tuple[Store, Any]]:
    """An open store of `kind` and a function reading an event's payload as the raw stored text."""
    if kind == "sqlite":
        path = tmp_path / "strict.db"
        store: Store = SQLiteStore(path)

        async def raw_sqlite(event_id: str) -> str:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                return str(db.execute("SELECT payload FROM events WHERE id = ?", (event_id,)).fetchone()[0])

        await store.open()
        try:
            yield store, raw_sqlite
        finally:
            await store.close()
        return
    async with pg_schema("strict") as url:
        store = PostgresStore(url, shared=False)
        target = parse_url(url)
        conn = await asyncpg.connect(target.dsn, server_settings={"search_path": target.schema or "public"})

        async def raw_pg(event_id: str) -> str:
            return str(await conn.fetchval("SELECT payload::text FROM events WHERE id = $1", event_id))

        await store.open()
        try:
            yield store, raw_pg
        finally:
            await store.close()
            await conn.close()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_stores_write_strict_json_for_an_unsanitised_payload(kind: str, tmp_path: Path) -> None:
    """save_polls of a NaN/Infinity/lone-surrogate payload succeeds and the stored text is strict JSON,
    with NaN and Infinity as null and lone surrogates as U+FFFD (PostgreSQL refused NaN outright)."""
    now = time.time()
    async with open_store(kind, tmp_path) as (store, raw_payload):
        await store.register([Registration(JOB, "acme", Source.API)], now)
        (watch,) = await store.claim_due(now, 1, 60.0)
        watch.status, watch.polls, watch.final, watch.finished_at = "failed", 1, "failed", now
        event = Event("ev-1", JOB, "acme", "job.failed", now, poisoned_payload())
        assert await store.save_polls([SavedPoll(watch, (NewEvent(event, ("ops",)),))]) == [True]
        stored = strict_json((await raw_payload("ev-1")).encode("utf-8"))
        assert stored["data"]["job"] == SANITISED_JOB
        (read,) = await store.events_for(JOB)
        assert read.payload["data"]["job"] == SANITISED_JOB


async def test_webhook_body_is_strict_json_for_an_unsanitised_payload() -> None:
    """The signed body of such an event is strict JSON the receiver accepts, its signature over those
    very bytes; a body with the literal NaN would have been refused (400) and retried forever."""
    receiver = TestReceiver([SECRET])
    url = await receiver.start()
    target = WebhookTarget(name="ops", url=url, secrets=(SECRET,), events=frozenset({"job.failed"}))
    event = Event("ev-2", JOB, "acme", "job.failed", time.time(), poisoned_payload())
    delivery = Delivery(1, event, "ops", DeliveryState.PENDING, 0, 0.0, 0.0)
    try:
        async with aiohttp.ClientSession() as session:
            result = await WebhookSender(session, SystemClock()).send(target, delivery)
    finally:
        await receiver.stop()
    assert (result.kind, receiver.not_strict) == (DeliveryOutcome.SUCCESS, 0), result
    (got,) = receiver.deliveries
    assert got.body["data"]["job"] == SANITISED_JOB
    assert json.dumps(got.body, allow_nan=False)  # what the receiver parsed is plain, finite JSON
