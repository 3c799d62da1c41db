"""Per-watch callbacks through the API (SPEC §13): validation, masking, conflicts and delivery.

A real daemon in-process against the simulated upstream; the callback receiver verifies signatures with
the Standard Webhooks check of tests/support, using the `[callbacks]` secret, not the webhooks' one.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from tests.api.conftest import StartDaemon
from tests.support.eventually import eventually
from tests.support.standard_webhooks import TestReceiver
from watcher.masking import MASK
from watcher.models import BreakerState, EndpointHealth

CB_SECRET = "whsec_" + base64.b64encode(b"api-test-callback-secret").decode()
HEADER_SECRET = "Bearer cb-h3ader-s3cret"
ENABLED = f"""
[callbacks]
enabled = true
secret = "{CB_SECRET}"
require_https = false
allow_networks = ["127.0.0.0/8"]
retry_initial_s = 0.05
retry_max_s = 0.2
"""
DISABLED_LOOPBACK = ENABLED.replace('allow_networks = ["127.0.0.0/8"]', "allow_networks = []")


@pytest.fixture
async def cb_receiver() -> AsyncIterator[TestReceiver]:
    """A verifying receiver for callbacks, signed with the callbacks' secret."""
    receiver = TestReceiver([CB_SECRET])
    await receiver.start()
    yield receiver
    await receiver.stop()


def callback(url: str, **kw: object) -> dict[str, object]:
    """A callback body with a secret header and a secret query parameter."""
    return {"url": url + "?token=q-s3cret", "headers": {"Authorization": HEADER_SECRET}, **kw}


async def test_callback_receives_signed_failure_and_is_masked(
    start_daemon: StartDaemon, cb_receiver: TestReceiver
) -> None:
    """Registered with a callback: its `job.failed` arrives signed, with its header; answers mask secrets."""
    d = await start_daemon(sections=ENABLED)
    job = d.sim.add_job(status="active").id
    assert cb_receiver.url is not None
    with capture_logs() as logs:
        status, body = await d.call(
            "POST", "/v1/watches", json={"job_id": job, "callback": callback(cb_receiver.url)}
        )
        assert status == 201, body
        assert body["callback"] == {
            "url": f"{cb_receiver.url}?{MASK}",
            "events": None,
            "headers": {"Authorization": MASK},
        }
        await eventually(lambda: len(d.sim.requests(job)) >= 1)
        d.sim.set_status(job, "failed", error="row 3")
        await eventually(lambda: len(cb_receiver.deliveries) >= 1)
        status, detail = await d.call("GET", f"/v1/watches/{job}")
    [got] = cb_receiver.deliveries
    assert got.type == "job.failed"
    assert got.body["data"]["job"]["id"] == job
    assert got.headers["Authorization"] == HEADER_SECRET
    assert status == 200
    assert detail["callback"]["headers"] == {"Authorization": MASK}
    by_hook = {x["webhook"]: x for x in detail["deliveries"]}
    assert by_hook["callback"]["event_id"] == got.id == by_hook["ops"]["event_id"]
    text = repr(logs)
    assert "s3cret" not in text and "q-s3cret" not in text


async def test_same_job_again_with_another_callback_is_409(
    start_daemon: StartDaemon, cb_receiver: TestReceiver
) -> None:
    """The watch keeps its callback: the same one again is 200, another (or none) is 409; in a batch the
    item is `invalid`, naming `callback`."""
    d = await start_daemon(sections=ENABLED)
    job = d.sim.add_job(status="active").id
    assert cb_receiver.url is not None
    first = {"job_id": job, "callback": callback(cb_receiver.url, events=["job.failed"])}
    assert (await d.call("POST", "/v1/watches", json=first))[0] == 201
    assert (await d.call("POST", "/v1/watches", json=first))[0] == 200
    other = {"job_id": job, "callback": callback(cb_receiver.url + "other")}
    status, problem = await d.call("POST", "/v1/watches", json=other)
    assert status == 409 and "different callback" in problem["detail"]
    assert (await d.call("POST", "/v1/watches", json={"job_id": job}))[0] == 409
    status, batch = await d.call("POST", "/v1/watches/batch", json={"watches": [first, other]})
    assert status == 200
    assert [r["result"] for r in batch["results"]] == ["existing", "invalid"]
    assert batch["results"][1]["errors"][0]["field"] == "watches[1].callback"


@pytest.mark.parametrize(
    ("sections", "url", "field", "words"),
    [
        ("", "https://hooks.example.com/x", "callback", "not enabled"),
        (DISABLED_LOOPBACK, "http://127.0.0.1:9/x", "callback.url", "loopback"),
        (DISABLED_LOOPBACK, "http://169.254.169.254/latest", "callback.url", "link-local"),
        (DISABLED_LOOPBACK, "http://[::ffff:127.0.0.1]/x", "callback.url", "IPv4-mapped"),
        (DISABLED_LOOPBACK, "http://0x7f.1/x", "callback.url", "loopback"),
        (DISABLED_LOOPBACK, "http://2130706433/x", "callback.url", "loopback"),
        (DISABLED_LOOPBACK, "http://0.0.0.0/x", "callback.url", "unspecified"),
        (DISABLED_LOOPBACK, "ftp://hooks.example.com/x", "callback.url", "https"),
        (ENABLED.replace("require_https = false", "require_https = true"), "http://127.0.0.1/x",
         "callback.url", "https"),
    ],
)  # fmt: skip
async def test_refused_callbacks_are_400_naming_the_field(
    start_daemon: StartDaemon, sections: str, url: str, field: str, words: str
) -> None:
    """Off, a blocked literal address or a wrong scheme: 400 naming the field, single and batch alike."""
    d = await start_daemon(sections=sections)
    item = {"job_id": d.sim.add_job(status="active").id, "callback": {"url": url}}
    status, problem = await d.call("POST", "/v1/watches", json=item)
    assert status == 400, problem
    assert [e["field"] for e in problem["errors"]] == [field]
    assert words in problem["errors"][0]["message"]
    status, batch = await d.call("POST", "/v1/watches/batch", json={"watches": [item]})
    assert status == 200
    assert batch["results"][0]["result"] == "invalid"
    assert batch["results"][0]["errors"][0]["field"] == f"watches[0].{field}"


async def test_bad_callback_fields_are_named(start_daemon: StartDaemon) -> None:
    """Reserved or malformed headers and unknown event names are refused, each field named."""
    d = await start_daemon(sections=ENABLED)
    job = d.sim.add_job(status="active").id
    bad = {
        "url": "http://127.0.0.1:9/x",
        "events": ["failed"],
        "headers": {"webhook-signature": "v1,x", "X-Ok": "line\r\nbreak"},
    }
    status, problem = await d.call("POST", "/v1/watches", json={"job_id": job, "callback": bad})
    assert status == 400
    fields = {e["field"] for e in problem["errors"]}
    assert "callback.events[0]" in fields
    assert any(f.startswith("callback.headers") for f in fields)
    assert "line" not in str(problem)
    ok = {"url": "http://127.0.0.1:9/x", "headers": {"webhook-signature": "v1,x"}}
    status, problem = await d.call("POST", "/v1/watches", json={"job_id": job, "callback": ok})
    assert status == 400
    assert [e["field"] for e in problem["errors"]] == ["callback.headers.webhook-signature"]


async def test_webhooks_list_breakers(start_daemon: StartDaemon) -> None:
    """GET /v1/webhooks: each webhook and the callbacks together, with breaker state and queue sizes."""
    d = await start_daemon(sections=ENABLED)
    status, body = await d.call("GET", "/v1/webhooks")
    assert status == 200
    assert [(i["name"], i["state"], i["open_endpoints"]) for i in body["items"]] == [
        ("ops", "closed", 0),
        ("audit", "closed", 0),
        ("callback", "closed", 0),
    ]
    assert d.daemon.state is not None
    store = d.daemon.state.store
    now = time.time()
    await store.put_endpoint(EndpointHealth("ops", "ops", BreakerState.OPEN, 5, now + 60, 60.0, "HTTP 503"))
    cb = "https://a.example:443"
    await store.put_endpoint(
        EndpointHealth(cb, "callback", BreakerState.HALF_OPEN, 7, now + 5, 20.0, "timeout")
    )
    await store.put_endpoint(EndpointHealth("https://b.example:443", "callback", BreakerState.CLOSED, 1))
    status, body = await d.call("GET", "/v1/webhooks")
    items = {i["name"]: i for i in body["items"]}
    assert items["ops"]["state"] == "open"
    assert (items["ops"]["consecutive_failures"], items["ops"]["last_error"]) == (5, "HTTP 503")
    assert items["ops"]["open_until"] is not None
    assert (items["callback"]["state"], items["callback"]["open_endpoints"]) == ("half_open", 1)
    assert items["audit"] == {
        "name": "audit", "format": "standard", "state": "closed", "consecutive_failures": 0,
        "open_until": None, "last_error": None, "pending": 0, "dead": 0, "open_endpoints": 0,
    }  # fmt: skip


async def test_dead_callback_delivery_is_listed_and_replayed(
    start_daemon: StartDaemon, cb_receiver: TestReceiver
) -> None:
    """A callback answered 410 is dead (listed with webhook `callback`); a replay delivers it, same id."""
    d = await start_daemon(sections=ENABLED)
    job = d.sim.add_job(status="failed", error="row 3").id
    assert cb_receiver.url is not None
    cb_receiver.fail_next(1, 410)
    body = {"job_id": job, "callback": {"url": cb_receiver.url, "events": ["job.failed"]}}
    assert (await d.call("POST", "/v1/watches", json=body))[0] == 201

    async def dead() -> list[dict[str, object]]:
        status, page = await d.call("GET", "/v1/deliveries?state=dead&webhook=callback")
        assert status == 200
        return list(page["deliveries"])

    async def one_dead() -> bool:
        return len(await dead()) == 1

    await eventually(one_dead)
    (gone,) = await dead()
    status, replay = await d.call("POST", f"/v1/deliveries/{gone['id']}/retry")
    assert status == 200 and replay["delivery"]["state"] == "pending"
    await eventually(lambda: len(cb_receiver.deliveries) == 1)
    assert cb_receiver.deliveries[0].id == gone["event_id"]
