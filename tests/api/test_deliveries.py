"""The delivery routes against a running daemon: list with filters and cursor, replay a dead delivery."""

from __future__ import annotations

from tests.api.conftest import Running, StartDaemon
from tests.support.eventually import eventually


async def _dead(d: Running, n: int) -> bool:
    return len((await d.call("GET", "/v1/deliveries?state=dead"))[1]["deliveries"]) == n


async def test_dead_delivery_is_replayed_with_the_same_webhook_id(start_daemon: StartDaemon) -> None:
    """A delivery dead after max_attempts goes back to pending on retry and arrives with its webhook-id."""
    d = await start_daemon(token="tok")
    d.receiver.set_status(500)
    job = d.sim.add_job(status="failed", error="boom").id
    assert (await d.call("POST", "/v1/watches", json={"job_id": job}))[0] == 201
    await eventually(lambda: _dead(d, 2))  # ops and audit, two attempts each
    dead = (await d.call("GET", "/v1/deliveries?state=dead&webhook=ops"))[1]["deliveries"]
    assert [(x["webhook"], x["attempts"], x["job_id"]) for x in dead] == [("ops", 2, job)]
    assert dead[0]["last_error"] and dead[0]["next_attempt_at"] is None
    d.receiver.set_status(None)
    status, body = await d.call("POST", f"/v1/deliveries/{dead[0]['id']}/retry")
    assert status == 200, body
    assert (body["delivery"]["state"], body["delivery"]["attempts"]) == ("pending", 0)
    assert body["delivery"]["event_id"] == dead[0]["event_id"]
    await eventually(lambda: d.receiver.ids() == [dead[0]["event_id"]])
    await eventually(lambda: _dead(d, 1))
    status, body = await d.call("POST", f"/v1/deliveries/{dead[0]['id']}/retry")
    assert status == 409 and "delivered" in body["detail"]
    for missing in ("999999", "9223372036854775807"):
        assert (await d.call("POST", f"/v1/deliveries/{missing}/retry"))[0] == 404
    for bad in ("0", "9223372036854775808", "99999999999999999999999", "abc", "%C2%B2", "%00"):
        status, body = await d.call("POST", f"/v1/deliveries/{bad}/retry")
        assert status == 400 and body["errors"][0]["field"] == "delivery_id", (bad, body)


async def test_list_filters_and_cursor(start_daemon: StartDaemon) -> None:
    """Newest first; state and webhook filters; next_cursor pages through every delivery once."""
    d = await start_daemon()
    jobs = [d.sim.add_job(status="failed").id for _ in range(3)]
    assert (await d.call("POST", "/v1/watches/batch", json={"watches": [{"job_id": j} for j in jobs]}))[
        0
    ] == 200

    async def six_delivered() -> bool:
        body = (await d.call("GET", "/v1/deliveries?state=delivered"))[1]
        return len(body["deliveries"]) == 6

    await eventually(six_delivered)
    everything = (await d.call("GET", "/v1/deliveries"))[1]
    ids = [x["id"] for x in everything["deliveries"]]
    assert ids == sorted(ids, reverse=True) and everything["next_cursor"] is None
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        body = (await d.call("GET", "/v1/deliveries?limit=4" + (f"&cursor={cursor}" if cursor else "")))[1]
        seen += [x["id"] for x in body["deliveries"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    audit = (await d.call("GET", "/v1/deliveries?webhook=audit"))[1]["deliveries"]
    assert len(audit) == 3 and {x["webhook"] for x in audit} == {"audit"}
    assert (await d.call("GET", "/v1/deliveries?state=pending"))[1]["deliveries"] == []
