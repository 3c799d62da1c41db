"""Input that no store can hold is a 400 naming the field, on SQLite and PostgreSQL (SPEC §7, §16).

NUL is the case that matters: PostgreSQL's text and jsonb cannot hold it, so before these checks a NUL in a
label, a label filter or a cursor reached the database and came back as a 500. A batch reports such an item
as invalid and registers the rest, and it survives a store that refuses one row of the batch.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from contextlib import closing

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.api.conftest import Backend, Running, StartDaemon
from watcher.store.postgres.conn import parse_url

PROBLEM = "application/problem+json"
JOB = "5135bfe3-b2c7-41f3-a44f-f4b58e7384df"


def _ids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1, version=4)) for i in range(n)]


@pytest.fixture
async def daemon(backend: Backend, start_daemon: StartDaemon) -> Running:
    """A daemon on each real store (the store fixture is set up first, so it is torn down last)."""
    return await start_daemon(token="hostile-token", store=backend.store)


async def _problem(d: Running, method: str, path: str, **kw: object) -> tuple[int, dict[str, object]]:
    headers = {**d.auth(), **kw.pop("headers", {})}  # type: ignore[dict-item]
    async with d.http.request(method, d.base + path, headers=headers, **kw) as r:  # type: ignore[arg-type]
        text = await r.text()
        assert r.content_type == PROBLEM, (r.status, text)
        body = await r.json(content_type=PROBLEM)
        assert body["status"] == r.status
        return r.status, body


# (name, method, path, JSON body or None, the field the 400 names)
NUL_INPUTS: list[tuple[str, str, str, object, str]] = [
    ("label value", "POST", "/v1/watches", {"job_id": JOB, "labels": {"team": "a\x00b"}}, "labels.team"),
    ("label key", "POST", "/v1/watches", {"job_id": JOB, "labels": {"te\x00am": "a"}}, "labels.te\x00am"),
    ("job id", "POST", "/v1/watches", {"job_id": JOB[:-1] + "\x00"}, "job_id"),
    ("workspace", "POST", "/v1/watches", {"job_id": JOB, "workspace": "ac\x00me"}, "workspace"),
    ("webhook name", "POST", "/v1/watches", {"job_id": JOB, "webhooks": ["o\x00ps"]}, "webhooks[0]"),
    ("field name", "POST", "/v1/watches", {"job_id": JOB, "\x00": 1}, "\x00"),
    ("batch key", "POST", "/v1/watches/batch", {"watches": [{"job_id": JOB}], "\x00": 1}, "\x00"),
    ("label filter", "GET", "/v1/watches?label=team:a%00b", None, "label"),
    ("label filter key", "GET", "/v1/watches?label=te%00am:a", None, "label"),
    ("watch cursor", "GET", "/v1/watches?cursor=" + JOB + "%00", None, "cursor"),
    ("both", "GET", "/v1/watches?label=a:%00&cursor=%00", None, "label"),
    ("status", "GET", "/v1/watches?status=active%00", None, "status"),
    ("delivery cursor", "GET", "/v1/deliveries?cursor=1%00", None, "cursor"),
    ("delivery webhook", "GET", "/v1/deliveries?webhook=ops%00", None, "webhook"),
    ("delivery state", "GET", "/v1/deliveries?state=dead%00", None, "state"),
    ("path job id", "GET", f"/v1/watches/{JOB}%00", None, "job_id"),
    ("path job id, delete", "DELETE", f"/v1/watches/%00{JOB}", None, "job_id"),
    ("path delivery id", "POST", "/v1/deliveries/1%00/retry", None, "delivery_id"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"), [c[1:] for c in NUL_INPUTS], ids=[c[0] for c in NUL_INPUTS]
)
async def test_nul_anywhere_is_a_400_naming_the_field(
    daemon: Running, method: str, path: str, body: object, field: str
) -> None:
    """A NUL in any string the API takes is refused before the store sees it, on every store."""
    kw = {} if body is None else {"json": body}
    status, problem = await _problem(daemon, method, path, **kw)
    assert status == 400, problem
    assert field in [e["field"] for e in problem["errors"]], problem  # type: ignore[attr-defined]
    status, page = await daemon.call("GET", "/v1/watches")
    assert status == 200 and page["watches"] == []


async def test_a_lone_surrogate_is_a_400_too(daemon: Running) -> None:
    """JSON can spell a lone surrogate (\\ud800), which UTF-8, and so no store, can hold."""
    raw = f'{{"job_id": "{JOB}", "labels": {{"team": "a\\ud800"}}}}'.encode()
    headers = {"Content-Type": "application/json"}
    status, problem = await _problem(daemon, "POST", "/v1/watches", data=raw, headers=headers)
    assert status == 400 and problem["errors"][0]["field"] == "labels.team"  # type: ignore[index]


async def test_label_filter_and_cursor_still_work(daemon: Running) -> None:
    """The checks refuse NUL, not ordinary filters: a label filter and a cursor page as before."""
    a, b, c = sorted(_ids(3))
    items = [{"job_id": j, "labels": {"team": "x:y z/é"}} for j in (a, b)] + [{"job_id": c}]
    assert (await daemon.call("POST", "/v1/watches/batch", json={"watches": items}))[1]["created"] == 3
    status, page = await daemon.call("GET", "/v1/watches", params={"label": "team:x:y z/é", "limit": "1"})
    assert status == 200 and [w["job_id"] for w in page["watches"]] == [a]
    params = {"label": "team:x:y z/é", "cursor": page["next_cursor"]}
    status, page = await daemon.call("GET", "/v1/watches", params=params)
    assert [w["job_id"] for w in page["watches"]] == [b]


async def test_batch_reports_a_nul_item_and_registers_the_rest(daemon: Running) -> None:
    """One item with a NUL label is `invalid` with its field named; the others are created."""
    a, b, c = _ids(3)
    items = [{"job_id": a}, {"job_id": b, "labels": {"k": "\x00"}}, {"job_id": c, "labels": {"k": "v"}}]
    status, body = await daemon.call("POST", "/v1/watches/batch", json={"watches": items})
    assert status == 200, body
    assert [r["result"] for r in body["results"]] == ["created", "invalid", "created"]
    assert body["results"][1]["errors"][0]["field"] == "watches[1].labels.k"
    assert body["results"][1]["job_id"] == b
    page = (await daemon.call("GET", "/v1/watches"))[1]
    assert sorted(w["job_id"] for w in page["watches"]) == sorted([a, c])


def _sqlite_trigger(path: str, job_id: str) -> None:
    with closing(sqlite3.connect(path, timeout=30.0, isolation_level=None)) as db:
        db.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON watches WHEN NEW.job_id = '{job_id}' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )


async def _refuse_inserts_of(backend: Backend, job_id: str) -> None:
    """Make the real database refuse one row, as a constraint or a broken page would: a trigger."""
    if backend.kind == "sqlite":
        # Off the event loop: the daemon runs on this loop, and a write transaction of its own (a purge, a
        # watch-list sync) can only commit, and so let the schema change in, while the loop runs.
        await asyncio.to_thread(_sqlite_trigger, backend.url, job_id)
        return
    target = parse_url(backend.url)
    conn = await asyncpg.connect(target.dsn)
    try:
        await conn.execute(
            f"""
            CREATE FUNCTION "{target.schema}".refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.job_id = '{job_id}' THEN RAISE EXCEPTION 'refused by the test'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse BEFORE INSERT ON "{target.schema}".watches
                FOR EACH ROW EXECUTE FUNCTION "{target.schema}".refuse();
            """
        )
    finally:
        await conn.close()


async def test_batch_survives_a_store_that_refuses_one_row(backend: Backend, daemon: Running) -> None:
    """The store refuses the whole statement for one row: every other item is still registered."""
    ids = _ids(5)
    await _refuse_inserts_of(backend, ids[2])
    items = [{"job_id": j} for j in ids] + [{"job_id": "nope"}]
    status, body = await daemon.call("POST", "/v1/watches/batch", json={"watches": items})
    assert status == 200, body
    assert [r["result"] for r in body["results"]] == ["created"] * 2 + ["invalid"] + ["created"] * 2 + [
        "invalid"
    ]
    refused = body["results"][2]
    assert refused["job_id"] == ids[2]
    assert refused["errors"] == [
        {"field": "watches[2]", "message": "the store refused this item; it is not registered"}
    ]
    assert "refused by the test" not in str(body)  # the database's words stay in the log
    assert (body["created"], body["existing"], body["invalid"]) == (4, 0, 2)
    page = (await daemon.call("GET", "/v1/watches"))[1]
    assert sorted(w["job_id"] for w in page["watches"]) == sorted(ids[:2] + ids[3:])
    status, again = await daemon.call("POST", "/v1/watches/batch", json={"watches": items[:2]})
    assert status == 200 and again["existing"] == 2


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("suffix", ["%0A", "%0D%0A", "%0A%0A", "%20"])
async def test_a_uuid_with_a_trailing_newline_is_not_a_job_id(
    daemon: Running, method: str, suffix: str
) -> None:
    """`$` matches before a final newline; the job id check must not, so `<uuid>%0A` is a 400."""
    assert (await daemon.call("POST", "/v1/watches", json={"job_id": JOB}))[0] == 201
    status, problem = await _problem(daemon, method, f"/v1/watches/{JOB}{suffix}")
    assert status == 400 and problem["errors"] == [  # type: ignore[comparison-overlap]
        {"field": "job_id", "message": "must be a UUID like 5135bfe3-b2c7-41f3-a44f-f4b58e7384df"}
    ]
    assert "\n" not in str(problem["detail"])
    assert (await daemon.call("GET", f"/v1/watches/{JOB}"))[0] == 200
