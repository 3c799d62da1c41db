"""API clients, scopes and workspaces (SPEC §14): the whole matrix of client by route by workspace, the audit
lines, the request counter, and `api.tokens` still meaning full access."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.api.conftest import Running, StartDaemon
from tests.api.test_client import watcher
from tests.observability.conftest import parse_metrics, value
from tests.support.eventually import eventually
from watcher.config import load_config, render_config
from watcher.errors import ConfigError

ADMIN = "scopes-admin-token-0123456789"  # api.tokens: full access, client label `token`
ALL = frozenset({"watches:read", "watches:write", "deliveries:read", "deliveries:write"})


@dataclass(frozen=True)
class C:
    """A configured client: its scopes and workspaces (None: all)."""

    name: str
    scopes: frozenset[str]
    workspaces: frozenset[str] | None

    @property
    def token(self) -> str:
        return ADMIN if self.name == "token" else f"tok-{self.name}-0123456789"

    def sees(self, ws: str) -> bool:
        return self.workspaces is None or ws in self.workspaces


CLIENTS = [
    C("token", ALL, None),
    C("ops", ALL, None),
    C("acme-rw", ALL, frozenset({"acme"})),
    C("acme-ro", frozenset({"watches:read", "deliveries:read"}), frozenset({"acme"})),
    C("watcher", frozenset({"watches:read", "watches:write"}), None),
    C("replayer", frozenset({"deliveries:read", "deliveries:write"}), frozenset({"other"})),
]
WORKSPACES = ("acme", "other")


def clients_toml() -> str:
    """The `[[api.clients]]` tables of `CLIENTS` (without `token`, which is `api.tokens`)."""
    out = ""
    for c in CLIENTS[1:]:
        out += f'[[api.clients]]\nname = "{c.name}"\ntoken = "{c.token}"\n'
        out += "scopes = [" + ", ".join(f'"{s}"' for s in sorted(c.scopes)) + "]\n"
        if c.workspaces is not None:
            out += "workspaces = [" + ", ".join(f'"{w}"' for w in sorted(c.workspaces)) + "]\n"
    return out


@dataclass
class World:
    """A daemon with one finished job per workspace, its deliveries delivered."""

    d: Running
    job: dict[str, str]  # workspace -> job id (watched, failed, delivered)
    delivery: dict[str, int]  # workspace -> a delivered delivery's id

    async def call(self, c: C, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.d.http.request(
            method, self.d.base + path, headers={"Authorization": f"Bearer {c.token}"}, **kw
        ) as r:
            text = await r.text()
            return r.status, (await r.json(content_type=None)) if text else None


async def make_world(start_daemon: StartDaemon, api: str = "") -> World:
    d = await start_daemon(token=ADMIN, api=api + clients_toml())
    admin = CLIENTS[0]
    world = World(d, {}, {})
    for ws in WORKSPACES:
        job = d.sim.add_job(status="failed", workspace=ws).id
        status, _ = await world.call(admin, "POST", "/v1/watches", json={"job_id": job, "workspace": ws})
        assert status == 201
        world.job[ws] = job

    async def delivered() -> bool:
        _, page = await world.call(admin, "GET", "/v1/deliveries?state=delivered")
        by_job = {x["job_id"]: x["id"] for x in page["deliveries"]}
        world.delivery = {ws: by_job[j] for ws, j in world.job.items() if j in by_job}
        return len(world.delivery) == len(WORKSPACES)

    await eventually(delivered)
    return world


def _needs(method: str, path: str) -> str:
    kind = "deliveries" if path.startswith("/v1/deliveries") else "watches"
    return f"{kind}:{'read' if method == 'GET' else 'write'}"


async def _check(w: World, c: C, ws: str) -> list[str]:
    """Every route for client `c` on workspace `ws`; the mismatches, as lines."""
    bad: list[str] = []
    admin = CLIENTS[0]

    def expect(what: str, got: int, want: int) -> None:
        if got != want:
            bad.append(f"{c.name} {what} [{ws}]: {got}, expected {want}")

    def allowed(method: str, path: str) -> bool:
        return _needs(method, path) in c.scopes

    new = str(uuid.uuid4())
    status, _ = await w.call(c, "POST", "/v1/watches", json={"job_id": new, "workspace": ws})
    want = 403 if not allowed("POST", "/v1/watches") or not c.sees(ws) else 201
    expect("POST /v1/watches", status, want)

    new = str(uuid.uuid4())
    status, body = await w.call(
        c, "POST", "/v1/watches/batch", json={"watches": [{"job_id": new, "workspace": ws}]}
    )
    if not allowed("POST", "/v1/watches/batch"):
        expect("POST /v1/watches/batch", status, 403)
    else:
        expect("POST /v1/watches/batch", status, 200)
        result = body["results"][0]["result"] if status == 200 else None
        if result != ("created" if c.sees(ws) else "forbidden"):
            bad.append(f"{c.name} batch item [{ws}]: {result}")

    status, body = await w.call(c, "GET", "/v1/watches?limit=1000")
    if not allowed("GET", "/v1/watches"):
        expect("GET /v1/watches", status, 403)
    else:
        expect("GET /v1/watches", status, 200)
        listed = w.job[ws] in {x["job_id"] for x in body["watches"]} if status == 200 else None
        if listed != c.sees(ws):
            bad.append(f"{c.name} GET /v1/watches lists the {ws} job: {listed}")

    job = w.job[ws]
    status, _ = await w.call(c, "GET", f"/v1/watches/{job}")
    expect(
        "GET /v1/watches/{job_id}",
        status,
        403 if not allowed("GET", "/v1/watches") else 200 if c.sees(ws) else 404,
    )

    status, _ = await w.call(c, "POST", f"/v1/watches/{job}/release")
    want = 403 if not allowed("POST", "/v1/watches") else 409 if c.sees(ws) else 404
    expect("POST /v1/watches/{job_id}/release", status, want)

    doomed = str(uuid.uuid4())
    assert (await w.call(admin, "POST", "/v1/watches", json={"job_id": doomed, "workspace": ws}))[0] == 201
    status, _ = await w.call(c, "DELETE", f"/v1/watches/{doomed}")
    want = 403 if not allowed("DELETE", "/v1/watches") else 204 if c.sees(ws) else 404
    expect("DELETE /v1/watches/{job_id}", status, want)
    still = (await w.call(admin, "GET", f"/v1/watches/{doomed}"))[0]
    expect("the watch after DELETE (admin)", still, 404 if want == 204 else 200)

    status, body = await w.call(c, "GET", "/v1/deliveries?limit=1000")
    if not allowed("GET", "/v1/deliveries"):
        expect("GET /v1/deliveries", status, 403)
    else:
        expect("GET /v1/deliveries", status, 200)
        listed = w.delivery[ws] in {x["id"] for x in body["deliveries"]} if status == 200 else None
        if listed != c.sees(ws):
            bad.append(f"{c.name} GET /v1/deliveries lists the {ws} delivery: {listed}")

    status, _ = await w.call(c, "POST", f"/v1/deliveries/{w.delivery[ws]}/retry")
    want = 403 if not allowed("POST", "/v1/deliveries") else 409 if c.sees(ws) else 404
    expect("POST /v1/deliveries/{delivery_id}/retry", status, want)
    return bad


async def test_the_whole_matrix_of_client_route_and_workspace(start_daemon: StartDaemon) -> None:
    """Six clients by eight routes by two workspaces: 403 for a missing scope; for another workspace 404 on
    reads and deletes and 403 on registration (a batch item `forbidden`); lists filtered."""
    w = await make_world(start_daemon)
    bad: list[str] = []
    for c in CLIENTS:
        for ws in WORKSPACES:
            bad += await _check(w, c, ws)
    assert not bad, "\n".join(bad)


async def test_registering_a_job_watched_in_another_workspace_is_forbidden(start_daemon: StartDaemon) -> None:
    """A job already watched in `other` cannot be registered again through `acme-rw`, whatever it says."""
    w = await make_world(start_daemon)
    acme_rw = CLIENTS[2]
    status, body = await w.call(acme_rw, "POST", "/v1/watches", json={"job_id": w.job["other"]})
    assert status == 403 and "workspace" in body["detail"]
    status, body = await w.call(
        acme_rw, "POST", "/v1/watches/batch", json={"watches": [{"job_id": w.job["other"]}]}
    )
    assert status == 200 and body["results"][0]["result"] == "forbidden" and body["forbidden"] == 1


async def test_unknown_or_missing_tokens_are_401(start_daemon: StartDaemon) -> None:
    """No token, or one nobody has: 401 with WWW-Authenticate, as before."""
    w = await make_world(start_daemon)
    for headers in ({}, {"Authorization": "Bearer nobody-has-this"}):
        async with w.d.http.get(w.d.base + "/v1/watches", headers=headers) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")


async def test_changing_requests_are_audited_and_every_request_counted(start_daemon: StartDaemon) -> None:
    """One `api.audit` line per changing request (client, method, route, id, status; never the token), and
    `watcher_api_requests_total{client,route,code}` with `token`, the client names and `anonymous`."""
    w = await make_world(start_daemon)
    acme_rw, acme_ro = CLIENTS[2], CLIENTS[3]
    new = str(uuid.uuid4())
    with capture_logs() as logs:
        await w.call(acme_rw, "POST", "/v1/watches", json={"job_id": new})
        await w.call(acme_ro, "DELETE", f"/v1/watches/{new}")
        await w.call(acme_rw, "DELETE", f"/v1/watches/{w.job['other']}")
        await w.call(acme_rw, "GET", "/v1/watches")
    audits = [e for e in logs if e["event"] == "api.audit"]
    assert [(e["client"], e["method"], e["route"], e.get("job_id"), e["status"]) for e in audits] == [
        ("acme-rw", "POST", "/v1/watches", new, 201),
        ("acme-ro", "DELETE", "/v1/watches/{job_id}", new, 403),
        ("acme-rw", "DELETE", "/v1/watches/{job_id}", w.job["other"], 404),
    ]
    assert all(c.token not in str(logs) for c in CLIENTS)
    async with w.d.http.get(w.d.base + "/nowhere") as r:
        assert r.status == 404
    async with w.d.http.get(w.d.base + "/metrics") as r:
        s = parse_metrics(await r.text())
    name = "watcher_api_requests_total"
    assert value(s, name, client="acme-rw", route="/v1/watches", code="201") == 1
    assert value(s, name, client="acme-ro", route="/v1/watches/{job_id}", code="403") == 1
    assert value(s, name, client="acme-rw", route="/v1/watches/{job_id}", code="404") == 1
    assert (value(s, name, client="token", route="/v1/watches", code="201") or 0) >= 2
    assert value(s, name, client="anonymous", route="unmatched", code="404") == 1
    assert all(c.token not in str(s) for c in CLIENTS)


async def test_rate_limit_per_client_is_429_with_retry_after(start_daemon: StartDaemon) -> None:
    """A client past its `rate_limit_per_s` gets 429 with Retry-After; the others are not slowed."""
    limited = '[[api.clients]]\nname = "slow"\ntoken = "tok-slow-0123456789"\nrate_limit_per_s = 2.0\n'
    w = await make_world(start_daemon, api=limited)
    slow = C("slow", ALL, None)
    statuses = [(await w.call(slow, "GET", "/v1/watches"))[0] for _ in range(6)]
    assert statuses[:2] == [200, 200] and 429 in statuses, statuses
    async with w.d.http.get(w.d.base + "/v1/watches", headers={"Authorization": f"Bearer {slow.token}"}) as r:
        if r.status == 429:
            assert int(r.headers["Retry-After"]) >= 1
    assert all([(await w.call(CLIENTS[1], "GET", "/v1/watches"))[0] == 200 for _ in range(6)])
    await asyncio.sleep(1.1)
    assert (await w.call(slow, "GET", "/v1/watches"))[0] == 200


async def test_max_watches_is_507_naming_the_limit(start_daemon: StartDaemon) -> None:
    """Past `api.max_watches` (counted by the gauges' snapshot) a registration is 507."""
    w = await make_world(start_daemon, api="max_watches = 3\n")
    admin = CLIENTS[0]
    assert (await w.call(admin, "POST", "/v1/watches", json={"job_id": str(uuid.uuid4())}))[0] == 201

    async def full() -> bool:
        status, body = await w.call(admin, "POST", "/v1/watches", json={"job_id": str(uuid.uuid4())})
        return status == 507 and "api.max_watches" in body["detail"]

    await eventually(full)
    status, _ = await w.call(
        admin, "POST", "/v1/watches/batch", json={"watches": [{"job_id": str(uuid.uuid4())}]}
    )
    assert status == 507


@pytest.mark.parametrize("who", ["acme-rw", "replayer"])
async def test_the_status_page_and_its_replay_work_with_a_scoped_token(
    start_daemon: StartDaemon, who: str
) -> None:
    """A scoped token opens the page's details (of its workspaces only) and replays a dead delivery."""
    w = await make_world(start_daemon)
    c = next(x for x in CLIENTS if x.name == who)
    ws = "acme" if who == "acme-rw" else "other"
    w.d.receiver.set_status(500)
    job = w.d.sim.add_job(status="failed", workspace=ws).id
    assert (await w.call(CLIENTS[0], "POST", "/v1/watches", json={"job_id": job, "workspace": ws}))[0] == 201

    async def dead() -> bool:
        _, page = await w.call(CLIENTS[0], "GET", "/v1/deliveries?state=dead")
        return any(x["job_id"] == job for x in page["deliveries"])

    await eventually(dead)
    _, page = await w.call(CLIENTS[0], "GET", "/v1/deliveries?state=dead")
    dead_id = next(x["id"] for x in page["deliveries"] if x["job_id"] == job)
    async with w.d.http.get(w.d.base + "/", headers={"Authorization": f"Bearer {c.token}"}) as r:
        html = await r.text()
        assert r.status == 200
    assert f'data-id="{dead_id}"' in html  # its replay button
    hidden = w.job["other" if ws == "acme" else "acme"]
    assert hidden not in html
    w.d.receiver.set_status(None)
    status, body = await w.call(c, "POST", f"/v1/deliveries/{dead_id}/retry")
    assert status == 200 and body["delivery"]["state"] == "pending"


async def test_the_cli_works_with_a_scoped_client(start_daemon: StartDaemon) -> None:
    """`--client NAME` takes that client's token from the configuration: what its scopes and workspaces
    allow works, the rest is the daemon's 403 or 404 on one line."""
    w = await make_world(start_daemon)
    code, out, err = await watcher(w.d, "watches", "list", "--client", "acme-ro")
    assert (code, err) == (0, "")
    assert w.job["acme"] in out and w.job["other"] not in out
    code, out, _ = await watcher(w.d, "deliveries", "list", "--client", "acme-ro", "--json")
    assert code == 0 and {x["job_id"] for x in json.loads(out)["deliveries"]} == {w.job["acme"]}
    code, _, err = await watcher(w.d, "watches", "add", str(uuid.uuid4()), "--client", "acme-ro")
    assert code == 1 and err.startswith(
        "watcher: 403 Forbidden: client acme-ro lacks the scope watches:write"
    )
    code, _, err = await watcher(w.d, "watches", "show", w.job["other"], "--client", "acme-rw")
    assert code == 1 and "404" in err
    code, out, _ = await watcher(
        w.d, "deliveries", "retry", str(w.delivery["other"]), "--client", "replayer", "--json"
    )
    assert code == 1  # delivered, not dead: 409, which shows the client got past its scope and workspace
    code, _, err = await watcher(w.d, "watches", "list", "--client", "nobody")
    assert code == 2 and "--client" in err


@pytest.mark.parametrize(
    ("clients", "problem"),
    [
        (
            'name = "a"\ntoken = "x1"\nworkspaces = ["nowhere"]\n',
            "api.clients[0].workspaces[0]: unknown workspace",
        ),
        ('name = "a"\ntoken = "x1"\nscopes = ["watches:delete"]\n', "api.clients[0].scopes[0]"),
        ('name = "token"\ntoken = "x1"\n', "api.clients[0].name: 'token' is reserved"),
        ('name = "a"\n', "api.clients[0].token: required"),
        ('name = "a"\ntoken = "t0"\n', "api.clients[0].token: is the same token as tokens[0]"),
        ('name = "a"\ntoken = "x1"\nrate_limit_per_s = 0\n', "api.clients[0].rate_limit_per_s"),
    ],
)
def test_bad_clients_are_refused_naming_the_key(tmp_path: Path, clients: str, problem: str) -> None:
    """Every mistake in `[[api.clients]]` is exit 2 naming the key, never the token."""
    path = tmp_path / "w.toml"
    path.write_text(
        '[upstream]\ntoken = "t"\napi_key = "k"\nworkspace_slug = "acme"\n'
        '[api]\ntokens = ["t0"]\n[[api.clients]]\n' + clients
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems
    assert "x1" not in str(err.value.problems) and 't0"' not in str(err.value.problems)


def test_a_non_loopback_listener_is_allowed_with_clients_only(tmp_path: Path) -> None:
    """`api.clients` without `api.tokens` is authentication enough for a public address."""
    path = tmp_path / "w.toml"
    path.write_text(
        '[upstream]\ntoken = "t"\napi_key = "k"\nworkspace_slug = "acme"\n'
        '[api]\nlisten = "0.0.0.0:8080"\n[[api.clients]]\nname = "a"\ntoken = "x1"\n'
    )
    assert load_config(path, env={}).api.has_auth()


def test_check_config_masks_client_tokens(tmp_path: Path) -> None:
    """`watcher check-config` prints every client with its scopes and workspaces, never its token."""
    path = tmp_path / "w.toml"
    path.write_text(
        '[upstream]\ntoken = "t"\napi_key = "k"\nworkspace_slug = "acme"\n'
        '[api]\ntokens = ["admin-secret-xyz"]\n'
        '[[api.clients]]\nname = "ci"\ntoken = "client-secret-abc"\nscopes = ["watches:read"]\n'
        'workspaces = ["acme"]\n'
    )
    settings = load_config(path, env={})
    for text in (render_config(settings), repr(settings), str(settings)):
        assert "client-secret-abc" not in text and "admin-secret-xyz" not in text
    rendered = render_config(settings)
    assert '[[api.clients]]\nname = "ci"\ntoken = "********"\nscopes = ["watches:read"]' in rendered
