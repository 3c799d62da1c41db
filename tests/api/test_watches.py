"""The watch routes against a running daemon: register, batch, list, show, delete, re-register."""

from __future__ import annotations

import uuid
from typing import Any

from tests.api.conftest import Running, StartDaemon
from tests.support.eventually import eventually


def _ids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1, version=4)) for i in range(n)]


async def _state(d: Running, job: str) -> str:
    status, body = await d.call("GET", f"/v1/watches/{job}")
    assert status == 200, body
    return str(body["state"])


async def test_same_id_from_api_and_watchlist_is_one_watch_and_one_event(start_daemon: StartDaemon) -> None:
    """The file and the API both register a job: one watch with both sources, one delivered event."""
    d = await start_daemon(token="t-1")
    job = d.sim.add_job(status="active").id
    d.watchlist.write_text(job + "\n")
    status, _ = await d.call("POST", "/v1/watches", json={"job_id": job})
    assert status in (200, 201)
    status, again = await d.call("POST", "/v1/watches", json={"job_id": job.upper()})
    assert status == 200 and again["job_id"] == job

    async def both_sources() -> bool:
        return sorted((await d.call("GET", f"/v1/watches/{job}"))[1]["sources"]) == ["api", "file"]

    await eventually(both_sources)
    await eventually(lambda: len(d.sim.requests(job)) >= 1)
    d.sim.set_status(job, "success")

    async def finished_and_delivered() -> dict[str, Any] | None:
        detail = (await d.call("GET", f"/v1/watches/{job}"))[1]
        delivered = detail["deliveries"] and all(x["state"] == "delivered" for x in detail["deliveries"])
        return detail if detail["final"] and delivered else None

    # Finished, and every delivery it made recorded: a duplicate event would be in the store by now.
    detail = await eventually(finished_and_delivered, 15, "the job finished and its deliveries done")
    assert [x.type for x in d.receiver.deliveries] == ["job.success"]
    page = (await d.call("GET", "/v1/watches"))[1]
    assert [w["job_id"] for w in page["watches"]] == [job]
    assert [t["type"] for t in detail["transitions"]] == ["job.active", "job.success"]
    assert [(x["webhook"], x["state"]) for x in detail["deliveries"]] == [("ops", "delivered")]
    assert detail["deliveries"][0]["event_id"] == d.receiver.deliveries[0].webhook_id


async def test_register_options_and_show(start_daemon: StartDaemon) -> None:
    """Workspace, labels, webhooks and max_watch_s are stored; 201 with a Location, then 200."""
    d = await start_daemon()
    job = d.sim.add_job(status="failed", workspace="other", error="row 3").id
    body = {
        "job_id": job.upper(),
        "workspace": "other",
        "labels": {"team": "billing", "env": "prod"},
        "webhooks": ["audit", "audit"],
        "max_watch_s": 3600,
    }
    async with d.http.post(d.base + "/v1/watches", json=body) as r:
        assert r.status == 201
        assert r.headers["Location"] == f"/v1/watches/{job}"
        created = await r.json()
    assert created["job_id"] == job
    assert (created["workspace"], created["labels"], created["webhooks"], created["max_watch_s"]) == (
        "other",
        {"team": "billing", "env": "prod"},
        ["audit"],
        3600.0,
    )
    assert (created["state"], created["sources"], created["polls"]) == ("unknown", ["api"], 0)
    await eventually(lambda: len(d.receiver.deliveries) == 1)
    assert d.receiver.deliveries[0].type == "job.failed"
    detail = (await d.call("GET", f"/v1/watches/{job}"))[1]
    assert (detail["state"], detail["final"], detail["next_poll_at"]) == ("failed", "failed", None)
    assert [(x["webhook"], x["state"], x["attempts"]) for x in detail["deliveries"]] == [
        ("audit", "delivered", 1)
    ]
    (t,) = detail["transitions"]
    assert (t["type"], t["previous_status"], t["status"]) == ("job.failed", None, "failed")
    status, _ = await d.call("POST", "/v1/watches", json={"job_id": job, "labels": {"ignored": "yes"}})
    assert status == 200
    assert (await d.call("GET", f"/v1/watches/{job}"))[1]["labels"] == {"team": "billing", "env": "prod"}


async def test_batch_per_item_results(start_daemon: StartDaemon) -> None:
    """A batch registers the good items and reports each bad one with its fields named."""
    d = await start_daemon()
    a, b = _ids(2)
    items = [{"job_id": a}, {"job_id": "nope"}, 7, {"job_id": a}, {"job_id": b, "webhooks": ["ops", "x"]}]
    status, body = await d.call("POST", "/v1/watches/batch", json={"watches": items})
    assert status == 200, body
    assert (body["created"], body["existing"], body["invalid"]) == (1, 1, 3)
    results = body["results"]
    assert [r["result"] for r in results] == ["created", "invalid", "invalid", "existing", "invalid"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert results[1]["errors"][0]["field"] == "watches[1].job_id"
    assert results[2]["errors"][0]["field"] == "watches[2]"
    assert results[4]["errors"] == [
        {"field": "watches[4].webhooks[1]", "message": "not a configured webhook name"}
    ]
    status, body = await d.call("POST", "/v1/watches/batch", json={"watches": [{"job_id": a}] * 1001})
    assert status == 400 and body["errors"][0]["field"] == "watches"


async def test_list_filters_and_pages(start_daemon: StartDaemon) -> None:
    """Status and label filters; pages in job id order joined by next_cursor cover everything once."""
    d = await start_daemon()
    ids = _ids(7)
    regs = [{"job_id": j, "labels": {"team": "a" if i % 2 else "b"}} for i, j in enumerate(ids)]
    assert (await d.call("POST", "/v1/watches/batch", json={"watches": regs}))[1]["created"] == 7
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        q = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = (await d.call("GET", "/v1/watches" + q))[1]
        seen += [w["job_id"] for w in page["watches"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids)
    team_a = (await d.call("GET", "/v1/watches?label=team:a"))[1]["watches"]
    assert [w["job_id"] for w in team_a] == [ids[1], ids[3], ids[5]]

    async def all_missing() -> bool:  # the simulator does not know these ids: 404 until `missing`
        page = (await d.call("GET", "/v1/watches?status=missing"))[1]
        return len(page["watches"]) == 7

    await eventually(all_missing, timeout=30)
    assert (await d.call("GET", "/v1/watches?status=active"))[1]["watches"] == []


async def test_delete_then_register_again_is_a_fresh_watch(start_daemon: StartDaemon) -> None:
    """DELETE answers 204 then 404; registering again starts over and redelivers the transition."""
    d = await start_daemon()
    job = d.sim.add_job(status="success").id
    assert (await d.call("POST", "/v1/watches", json={"job_id": job}))[0] == 201
    await eventually(lambda: len(d.receiver.deliveries) == 1)
    assert (await d.call("DELETE", f"/v1/watches/{job}"))[0] == 204
    assert (await d.call("DELETE", f"/v1/watches/{job}"))[0] == 404
    assert (await d.call("GET", f"/v1/watches/{job}"))[0] == 404
    assert (await d.call("POST", "/v1/watches", json={"job_id": job}))[0] == 201
    await eventually(lambda: len(d.receiver.deliveries) == 2)
    first, second = d.receiver.deliveries
    assert first.type == second.type == "job.success"
    assert first.webhook_id == second.webhook_id  # the same fact keeps its id (docs/api/http.md, "Stopping")
    assert await _state(d, job) == "success"
