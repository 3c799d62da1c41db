"""`GET /v1/job-types` (SPEC §12, §14): the learnt types, filtered to a client's workspaces, scope checked."""

from __future__ import annotations

from tests.api.conftest import StartDaemon
from tests.support.eventually import eventually

ADMIN = "job-types-admin-token-0123456789"
CLIENTS = """
[[api.clients]]
name = "acme-ro"
token = "tok-acme-ro-0123456789"
scopes = ["watches:read"]
workspaces = ["acme"]
[[api.clients]]
name = "replayer"
token = "tok-replayer-0123456789"
scopes = ["deliveries:read", "deliveries:write"]
"""


async def test_types_are_learnt_and_listed_per_client(start_daemon: StartDaemon) -> None:
    """Finished jobs teach their (workspace, name) type; a client limited to a workspace sees only its
    types, one without `watches:read` gets 403."""
    d = await start_daemon(token=ADMIN, api=CLIENTS)
    for workspace, name in (("acme", "render"), ("acme", "render"), ("other", "train")):
        job = d.sim.add_job(status="success", name=name, workspace=workspace)
        status, _ = await d.call("POST", "/v1/watches", json={"job_id": job.id, "workspace": workspace})
        assert status == 201

    async def learnt() -> list[tuple[str, str, int]]:
        _, body = await d.call("GET", "/v1/job-types")
        rows = sorted((t["workspace"], t["name"], t["samples"]) for t in body["items"])
        return rows if rows == [("acme", "render", 2), ("other", "train", 1)] else []

    await eventually(learnt, 10, "both types learnt")
    _, body = await d.call("GET", "/v1/job-types")
    assert {"p50_s", "p90_s", "p99_s"} <= set(body["items"][0])

    async def as_client(token: str) -> tuple[int, dict[str, object]]:
        headers = {"Authorization": f"Bearer {token}"}
        async with d.http.get(d.base + "/v1/job-types", headers=headers) as r:
            return r.status, await r.json(content_type=None)

    status, body = await as_client("tok-acme-ro-0123456789")
    assert status == 200
    assert [(t["workspace"], t["name"]) for t in body["items"]] == [("acme", "render")]  # type: ignore[attr-defined]
    status, problem = await as_client("tok-replayer-0123456789")
    assert status == 403 and "watches:read" in str(problem["detail"])
