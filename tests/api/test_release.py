"""`POST /v1/watches/{job_id}/release`: the answers other than a release (which tests/e2e/test_quarantine.py
drives end to end with a really poisoned row)."""

from __future__ import annotations

import uuid

from tests.api.conftest import StartDaemon


async def test_release_answers_problems_for_what_is_not_quarantined(start_daemon: StartDaemon) -> None:
    """401 without the token, 400 for a malformed id, 404 for an unknown job, 409 for a watch that is not
    quarantined; a listed watch shows failures 0 and no quarantine."""
    d = await start_daemon(token="t-1")
    job = d.sim.add_job(status="active").id
    assert (await d.call("POST", "/v1/watches", json={"job_id": job}))[0] == 201
    async with d.http.post(f"{d.base}/v1/watches/{job}/release") as r:
        assert r.status == 401
    status, body = await d.call("POST", "/v1/watches/not-a-uuid/release")
    assert status == 400 and body["errors"][0]["field"] == "job_id"
    status, body = await d.call("POST", f"/v1/watches/{uuid.uuid4()}/release")
    assert status == 404 and body["status"] == 404
    status, body = await d.call("POST", f"/v1/watches/{job}/release")
    assert status == 409 and "not quarantined" in body["detail"]
    status, watch = await d.call("GET", f"/v1/watches/{job}")
    assert status == 200
    assert (watch["failures"], watch["last_failure"], watch["quarantined_at"]) == (0, None, None)
    status, page = await d.call("GET", "/v1/watches?status=quarantined")
    assert status == 200 and page["watches"] == []
