"""Hypothesis against the whole read path (issue 12, SPEC §16): arbitrary bytes and poisoned JSON answered by
a loopback server, read by the real upstream client, decided by the real policy and saved by the real
SQLite and PostgreSQL stores. No exception escapes, every result is storable, and what the store holds
reads back as strict JSON (checked by the test receiver's independent strict parser)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.postgres import pg_schema
from tests.support.standard_webhooks import strict_json
from watcher.clock import SystemClock
from watcher.models import Credentials, PollOutcome, Registration, Source, Watch
from watcher.polling.policy import PollingPolicy, decide
from watcher.store.base import Store
from watcher.store.postgres import PostgresStore
from watcher.store.postgres.conn import parse_url
from watcher.store.sqlite import SQLiteStore

SLUG = "acme"
T0 = 1_775_000_000.0
POLICY = PollingPolicy(
    initial_interval_s=5.0,
    multiplier=1.5,
    max_interval_s=60.0,
    jitter=0.2,
    max_watch_s=3600.0,
    not_found_limit=3,
    error_backoff_max_s=300.0,
    terminal_statuses=frozenset({"success", "failed", "cancelled"}),
)


# -- bodies ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text written as is: what `json.dumps` will not write (a 5,000-digit integer, deep nesting)."""

    text: str


def write(value: Any, ascii_only: bool) -> str:
    """JSON text of `value` as a lenient server writes it: NaN and Infinity literals, lone surrogates
    escaped (`ascii_only`) or raw, `Raw` pieces spliced in."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        items = (f"{write(str(k), ascii_only)}: {write(v, ascii_only)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(write(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
texts = st.text(st.characters(codec=None, exclude_categories=()) | surrogates, max_size=12)
POISON = [
        Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e400"), Raw("-1e999"),
        Raw("9" * 5000), Raw("-" + "1" * 4301), Raw("[" * 64 + "]" * 64),
        Raw("[" * 100_000 + "]" * 100_000), Raw('{"a":' * 70 + "1" + "}" * 70),
        Raw('"\\ud800"'), Raw('"\\udfff\\ud800"'), Raw('"\\ud83d\\ude00"'),
]  # fmt: skip
poison = st.sampled_from(POISON)
leaves = st.none() | st.booleans() | st.integers() | st.floats() | texts | poison
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=12,
)
status_values = st.sampled_from(
    ["queued", "active", "success", "FAILED", "cancelled", "CANCELLED", "expired", "On Hold!", "", "  "]
) | texts  # fmt: skip
updated_values = st.sampled_from(["2026-04-01T10:18:42.000Z", "soon", "", "a\x00b"]) | texts


@dataclass(frozen=True)
class BodySpec:
    """A job body to answer, the job id filled in when it is known."""

    status: Any
    updated: Any
    extras: tuple[tuple[str, Any], ...]
    id_mode: str  # "same", "upper", "other" or "missing"
    ascii_only: bool

    def render(self, job_id: str) -> bytes:
        doc: dict[str, Any] = {}
        if self.id_mode != "missing":
            ids = {"same": job_id, "upper": job_id.upper(), "other": str(uuid.UUID(int=7))}
            doc["id"] = ids[self.id_mode]
        doc["status"] = self.status
        doc["updatedAt"] = self.updated
        doc.update(self.extras)
        return write(doc, self.ascii_only).encode("utf-8", "surrogatepass")


extras = st.lists(st.tuples(texts, values), max_size=4).map(tuple)
# A job as the upstream means it, with poison in its other fields; then anything at all.
plausible_specs = st.builds(
    BodySpec,
    status=st.sampled_from(["queued", "active", "success", "FAILED", "cancelled", "CANCELLED", "expired"]),
    updated=st.just("2026-04-01T10:18:42.000Z"),
    extras=extras,
    id_mode=st.sampled_from(["same", "upper"]),
    ascii_only=st.booleans(),
)
any_specs = st.builds(
    BodySpec,
    status=status_values | poison,
    updated=updated_values,
    extras=extras,
    id_mode=st.sampled_from(["same", "upper", "other", "missing"]),
    ascii_only=st.booleans(),
)


# -- the harness ---------------------------------------------------------------------------------------------


@dataclass
class Harness:
    """A loopback upstream answering `answer`, the real client, and an open store of one kind."""

    kind: str
    store: Store
    client: Any
    read_payloads: Any
    answer: bytes = b""
    served: int = 0
    jobs: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    async def check(self, body: bytes | BodySpec) -> None:
        """Register a new job, answer its poll with `body`, decide, save, read back: nothing may raise."""
        self.jobs += 1
        job_id = str(uuid.UUID(int=self.jobs))
        self.answer = body.render(job_id) if isinstance(body, BodySpec) else body
        await self.store.register([Registration(job_id, SLUG, Source.API)], T0)
        claimed = await self.store.claim_due(T0, 10, 60.0)
        assert [w.job_id for w in claimed] == [job_id]
        result = await self.client.get_job(job_id, SLUG)
        assert result.outcome in (PollOutcome.OK, PollOutcome.INVALID_RESPONSE), result
        self.outcomes[result.outcome.value] = self.outcomes.get(result.outcome.value, 0) + 1
        decision = decide(claimed[0], result, T0, POLICY, random.Random(self.jobs), _route)
        assert await self.store.save_polls([decision.saved]) == [True]
        stored = await self.store.get_watch(job_id)
        assert stored is not None and stored.status == decision.saved.watch.status
        events = await self.store.events_for(job_id)
        if result.outcome is PollOutcome.OK:
            assert result.body is not None
            strict_json(json.dumps(result.body, ensure_ascii=False, allow_nan=False).encode())
            assert [e.type for e in events] == [e.event.type for e in decision.saved.events]
            assert events[0].payload["data"]["job"] == result.body
        else:
            assert events == []
        for text in await self.read_payloads(job_id):
            strict_json(text.encode("utf-8"))


def _route(event_type: str, watch: Watch) -> tuple[str, ...]:
    return ("ops",)


@contextlib.asynccontextmanager
async def harness(kind: str, tmp_path: Path) -> AsyncIterator[Harness]:
    """Everything `Harness` needs, opened on loopback and closed afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        box: list[Harness] = []

        async def handle(request: web.Request) -> web.Response:
            box[0].served += 1
            return web.Response(body=box[0].answer, content_type="application/json")

        app = web.Application()
        app.router.add_get("/api/v2/jobs/{id}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        session = await stack.enter_async_context(aiohttp.ClientSession())
        from watcher.polling.upstream import UpstreamClient

        creds = {SLUG: Credentials(SLUG, f"http://{host}:{port}/api/v2", "tok", "key")}
        client = UpstreamClient(session, creds, 10.0, SystemClock())
        store: Store
        if kind == "sqlite":
            path = tmp_path / "poison.db"
            store = SQLiteStore(path)

            async def read_payloads(job_id: str) -> list[str]:
                with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                    rows = db.execute("SELECT payload FROM events WHERE job_id = ?", (job_id,)).fetchall()
                return [row[0] for row in rows]

        else:
            url = await stack.enter_async_context(pg_schema("poison"))
            store = PostgresStore(url, shared=False)
            target = parse_url(url)
            search_path = {"search_path": target.schema or "public"}
            conn = await asyncpg.connect(target.dsn, server_settings=search_path)
            stack.push_async_callback(conn.close)

            async def read_payloads(job_id: str) -> list[str]:
                rows = await conn.fetch("SELECT payload::text AS p FROM events WHERE job_id = $1", job_id)
                return [row["p"] for row in rows]

        await store.open()
        stack.push_async_callback(store.close)
        box.append(Harness(kind, store, client, read_payloads))
        yield box[0]


# -- the tests -----------------------------------------------------------------------------------------------


def _every_poison(test: Any) -> Any:
    """Each poison once for sure, in a field of a job and as a key's value, whatever hypothesis draws."""
    updated = "2026-04-01T10:18:42.000Z"
    for raw in POISON:
        test = example(BodySpec("failed", updated, (("detail", raw),), "same", True))(test)
        test = example(BodySpec("active", updated, (("k\ud800", [raw]),), "same", False))(test)
    return test


HYPOTHESIS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_any_answer_is_classified_stored_and_strict(kind: str, tmp_path: Path) -> None:
    """Poisoned job bodies and arbitrary bytes: OK with a strict body, or INVALID_RESPONSE; never raised."""
    with asyncio.Runner() as runner:
        ctx = harness(kind, tmp_path)
        h = runner.run(ctx.__aenter__())
        try:

            @HYPOTHESIS
            @given(st.one_of(plausible_specs, any_specs, st.binary(max_size=200)))
            @_every_poison
            def check(body: bytes | BodySpec) -> None:
                runner.run(h.check(body))

            check()
        finally:
            runner.run(ctx.__aexit__(None, None, None))
    # The examples reached both sides of the classifier and every answer went over HTTP.
    assert h.outcomes.get("ok", 0) >= 5 and h.outcomes.get("invalid_response", 0) >= 5, h.outcomes
    assert h.served == h.jobs
