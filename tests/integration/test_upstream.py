"""The upstream client against the real simulator (and a canned server for odd answers) on loopback."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from watcher.clock import SystemClock, parse_retry_after
from watcher.devtools.clock import ManualClock
from watcher.devtools.simulate import GARBAGE_VARIANTS, Faults, Simulator
from watcher.models import Credentials, PollOutcome, PollResult
from watcher.polling.upstream import DEFAULT_MAX_BODY_BYTES, UpstreamClient

TOKEN = "tok-7f3a9c1e-very-secret"
API_KEY = "key-b21d44e0-very-secret"
SLUG = "acme"
WORKSPACE_ID = "6f8c7d9d-0000-4000-8000-000000000001"


@pytest.fixture
async def sim() -> AsyncIterator[tuple[Simulator, str]]:
    """A simulator with the test credentials, served on a free loopback port."""
    simulator = Simulator(token=TOKEN, api_key=API_KEY, workspace_slug=SLUG, rng=random.Random(7))
    url = await simulator.start()
    yield simulator, url
    await simulator.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One pooled session, as the daemon uses."""
    async with aiohttp.ClientSession() as s:
        yield s


def creds(
    base_url: str, *, token: str = TOKEN, slug: str = SLUG, workspace_id: str | None = None
) -> Credentials:
    """Credentials for workspace `slug` at `base_url`."""
    return Credentials(slug=slug, base_url=base_url, token=token, api_key=API_KEY, workspace_id=workspace_id)


def client(
    session: aiohttp.ClientSession,
    base_url: str,
    timeout_s: float = 5.0,
    clock: ManualClock | None = None,
    workspace_id: str | None = None,
) -> UpstreamClient:
    """A client whose only workspace is `acme`."""
    return UpstreamClient(session, {SLUG: creds(base_url, workspace_id=workspace_id)}, timeout_s, clock=clock)


@pytest.fixture
async def canned() -> AsyncIterator[tuple[list[web.Response], list[dict[str, str]], str]]:
    """A real server answering each request with the next queued response and recording its headers."""
    answers: list[web.Response] = []
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return answers.pop(0)

    app = web.Application()
    app.router.add_get("/api/v2/jobs/{id}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield answers, seen, f"http://{host}:{port}/api/v2"
    await runner.cleanup()


def job_body(job_id: str, **extra: Any) -> dict[str, Any]:
    """A valid SPEC §2 body for `job_id`."""
    return {
        "id": job_id,
        "createdAt": "2026-04-01T10:16:00.000Z",
        "updatedAt": "2026-04-01T10:18:42.000Z",
        "jobProviderId": "b9eb98d0-0000-4000-8000-000000000000",
        "name": "customer.createBatch",
        "status": "success",
        "error": None,
        "workspaceId": WORKSPACE_ID,
        **extra,
    }


JOB = "5135bfe3-b2c7-41f3-a44f-f4b58e7384df"


def assert_no_secret(result: PollResult, up: UpstreamClient) -> None:
    """Neither the result nor the client may show a credential."""
    for text in (result.detail, repr(result), repr(up)):
        assert TOKEN not in text
        assert API_KEY not in text


class TestAgainstSimulator:
    """Every outcome class the simulator can produce."""

    async def test_ok_returns_the_body_as_received(self, sim: tuple[Simulator, str], session: Any) -> None:
        """A visible job comes back as OK with the simulator's body, unchanged."""
        simulator, url = sim
        job = simulator.add_job(status="active")
        up = client(session, url)
        result = await up.get_job(job.id, SLUG)
        assert result.outcome is PollOutcome.OK
        assert result.status_code == 200
        assert result.body == simulator.job_view(job)
        assert result.duration_s > 0
        assert_no_secret(result, up)

    async def test_not_found_and_not_yet_visible(self, sim: tuple[Simulator, str], session: Any) -> None:
        """Unknown jobs and jobs not yet visible are both NOT_FOUND."""
        simulator, url = sim
        hidden = simulator.add_job(visible_after_s=3600)
        up = client(session, url)
        for job_id in (JOB, hidden.id):
            result = await up.get_job(job_id, SLUG)
            assert (result.outcome, result.status_code, result.body) == (PollOutcome.NOT_FOUND, 404, None)

    async def test_rate_limited_with_retry_after_seconds(
        self, sim: tuple[Simulator, str], session: Any
    ) -> None:
        """A 429 reports its Retry-After in seconds."""
        simulator, url = sim
        simulator.faults = Faults(rate_limit=1.0, retry_after_s=7)
        result = await client(session, url).get_job(simulator.add_job().id, SLUG)
        assert (result.outcome, result.status_code, result.retry_after_s) == (
            PollOutcome.RATE_LIMITED,
            429,
            7.0,
        )

    @pytest.mark.parametrize(("token", "slug", "code"), [("wrong", SLUG, 401), (TOKEN, "other", 403)])
    async def test_bad_credentials_are_client_errors(
        self, sim: tuple[Simulator, str], session: Any, token: str, slug: str, code: int
    ) -> None:
        """401 and 403 are CLIENT_ERROR and the detail names only the status."""
        simulator, url = sim
        up = UpstreamClient(session, {"w": creds(url, token=token, slug=slug)}, 5.0)
        result = await up.get_job(simulator.add_job().id, "w")
        assert (result.outcome, result.status_code, result.detail) == (
            PollOutcome.CLIENT_ERROR,
            code,
            f"HTTP {code}",
        )

    async def test_server_errors(self, sim: tuple[Simulator, str], session: Any) -> None:
        """500/502/503 are SERVER_ERROR; a 503 carries its Retry-After."""
        simulator, url = sim
        simulator.faults = Faults(server_error=1.0, retry_after_s=2)
        job = simulator.add_job()
        up = client(session, url)
        results = [await up.get_job(job.id, SLUG) for _ in range(60)]
        assert {r.outcome for r in results} == {PollOutcome.SERVER_ERROR}
        assert {r.status_code for r in results} == {500, 502, 503}
        assert {r.retry_after_s for r in results if r.status_code == 503} == {2.0}
        assert {r.retry_after_s for r in results if r.status_code != 503} == {None}

    async def test_slow_answer_times_out(self, sim: tuple[Simulator, str], session: Any) -> None:
        """An answer slower than timeout_s is TIMEOUT, reported after about timeout_s."""
        simulator, url = sim
        simulator.faults = Faults(slow=1.0, slow_s=10)
        result = await client(session, url, timeout_s=0.2).get_job(simulator.add_job().id, SLUG)
        assert result.outcome is PollOutcome.TIMEOUT
        assert 0.15 < result.duration_s < 2

    async def test_dropped_connection_is_network_error(
        self, sim: tuple[Simulator, str], session: Any
    ) -> None:
        """A connection closed without an answer is NETWORK_ERROR."""
        simulator, url = sim
        simulator.faults = Faults(drop=1.0)
        result = await client(session, url).get_job(simulator.add_job().id, SLUG)
        assert (result.outcome, result.status_code) == (PollOutcome.NETWORK_ERROR, None)
        assert "Disconnected" in result.detail
        assert {r["fault"] for r in simulator.requests()} == {"drop"}

    @pytest.mark.parametrize("variant", GARBAGE_VARIANTS)
    async def test_garbage_is_invalid_response(
        self, sim: tuple[Simulator, str], session: Any, variant: str
    ) -> None:
        """Every kind of 200-with-garbage is INVALID_RESPONSE, never OK, never an exception."""
        simulator, url = sim
        job = simulator.add_job()
        simulator.force_fault(job.id, "garbage", variant=variant)
        result = await client(session, url).get_job(job.id, SLUG)
        assert (result.outcome, result.status_code, result.body) == (PollOutcome.INVALID_RESPONSE, 200, None)
        assert result.detail
        assert (await client(session, url).get_job(job.id, SLUG)).outcome is PollOutcome.OK

    async def test_connection_refused(self, session: Any) -> None:
        """Nothing listening on the port is NETWORK_ERROR."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        result = await client(session, f"http://127.0.0.1:{port}/api/v2").get_job(JOB, SLUG)
        assert result.outcome is PollOutcome.NETWORK_ERROR
        assert TOKEN not in result.detail and API_KEY not in result.detail

    async def test_unknown_workspace_sends_nothing(self, sim: tuple[Simulator, str], session: Any) -> None:
        """A workspace the client has no credentials for is CLIENT_ERROR without a request."""
        simulator, url = sim
        result = await client(session, url).get_job(simulator.add_job().id, "nope")
        assert (result.outcome, result.detail) == (PollOutcome.CLIENT_ERROR, "unknown workspace")
        assert simulator.requests() == []


class TestAgainstCannedServer:
    """Answers the simulator does not give: extra fields, dates, redirects, huge bodies."""

    async def test_headers_sent(self, canned: Any, session: Any) -> None:
        """Every credential header, the workspace id and Accept are sent."""
        answers, seen, url = canned
        answers.append(web.json_response(job_body(JOB)))
        await client(session, url, workspace_id=WORKSPACE_ID).get_job(JOB, SLUG)
        headers = seen[0]
        assert headers["Authorization"] == f"Bearer {TOKEN}"
        assert headers["x-api-key"] == API_KEY
        assert headers["x-workspace-slug"] == SLUG
        assert headers["x-workspace-id"] == WORKSPACE_ID
        assert headers["Accept"] == "application/json"

    async def test_no_workspace_id_header_when_unset(self, canned: Any, session: Any) -> None:
        """x-workspace-id is optional and omitted when not configured."""
        answers, seen, url = canned
        answers.append(web.json_response(job_body(JOB)))
        await client(session, url).get_job(JOB, SLUG)
        assert "x-workspace-id" not in seen[0]

    async def test_extra_fields_and_id_case_are_kept(self, canned: Any, session: Any) -> None:
        """Unknown fields pass through; an upper-case id still matches the requested one."""
        answers, _, url = canned
        body = job_body(JOB.upper(), progress={"done": 3}, queue="default")
        answers.append(web.json_response(body))
        result = await client(session, url).get_job(JOB, SLUG)
        assert result.outcome is PollOutcome.OK
        assert result.body == body

    async def test_retry_after_http_date(self, canned: Any, session: Any) -> None:
        """A 429's Retry-After given as an HTTP date is converted to seconds from the clock's now."""
        answers, _, url = canned
        clock = ManualClock(start=1_775_000_000.0)
        when = datetime.fromtimestamp(clock.now() + 120, tz=UTC)
        answers.append(web.Response(status=429, headers={"Retry-After": format_datetime(when, usegmt=True)}))
        result = await client(session, url, clock=clock).get_job(JOB, SLUG)
        assert (result.outcome, result.retry_after_s) == (PollOutcome.RATE_LIMITED, 120.0)
        assert result.duration_s == 0.0  # measured on the injected clock, which did not move

    @pytest.mark.parametrize(
        ("status", "outcome"),
        [(302, PollOutcome.CLIENT_ERROR), (400, PollOutcome.CLIENT_ERROR), (504, PollOutcome.SERVER_ERROR)],
    )
    async def test_other_status_codes(
        self, canned: Any, session: Any, status: int, outcome: PollOutcome
    ) -> None:
        """Redirects are not followed; other 4xx are client errors, 5xx server errors."""
        answers, seen, url = canned
        answers.append(web.Response(status=status, headers={"Location": url + "/jobs/" + JOB}))
        result = await client(session, url).get_job(JOB, SLUG)
        assert (result.outcome, result.status_code) == (outcome, status)
        assert len(seen) == 1

    @pytest.mark.parametrize(
        ("body", "detail"),
        [
            (b"x" * (DEFAULT_MAX_BODY_BYTES + 10), "larger than"),
            (b'{"id": "' + JOB.encode() + b'", "status": "success"}', "'updatedAt'"),
            (b'{"id": 5, "status": "success", "updatedAt": "x"}', "'id'"),
            (b"\xff\xfe", "not JSON"),
            (b"null", "not an object"),
        ],
    )
    async def test_invalid_bodies(self, canned: Any, session: Any, body: bytes, detail: str) -> None:
        """Oversized, incomplete, mistyped or undecodable bodies are INVALID_RESPONSE with a reason."""
        answers, _, url = canned
        answers.append(web.Response(body=body, content_type="application/json"))
        result = await client(session, url).get_job(JOB, SLUG)
        assert result.outcome is PollOutcome.INVALID_RESPONSE
        assert detail in result.detail


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("12", 12.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
        ("Wed, 21 Oct 2015 07:28:00", 30.0),  # no zone: GMT by definition
        ("Wed, 41 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Seconds and HTTP dates are understood, clamped at zero; anything else is None."""
    now = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC).timestamp()
    assert parse_retry_after(value, now) == expected


async def test_client_repr_hides_credentials(session: aiohttp.ClientSession) -> None:
    """The client's and the credentials' reprs name the workspace, never the token or key."""
    up = UpstreamClient(session, {SLUG: creds("http://127.0.0.1:1")}, 1.0, clock=SystemClock())
    for text in (repr(up), repr(creds("http://127.0.0.1:1"))):
        assert SLUG in text
        assert TOKEN not in text and API_KEY not in text


def _raw(status: str = '"active"', updated: str = '"2026-04-01T10:18:42.000Z"') -> bytes:
    """A body for JOB with raw JSON text for its status and updatedAt."""
    return f'{{"id": "{JOB}", "status": {status}, "updatedAt": {updated}}}'.encode()


class TestPoisonBodies:
    """SPEC §16: every poison body the simulator serves is classified, never raised (issue 12)."""

    async def _poll(self, sim: tuple[Simulator, str], session: Any, variant: str) -> tuple[PollResult, str]:
        simulator, url = sim
        job = simulator.add_job(status="failed", error="boom")
        simulator.force_fault(job.id, "poison", variant=variant)
        return await client(session, url).get_job(job.id, SLUG), job.id

    async def test_lone_surrogates_become_replacement_characters(self, sim: Any, session: Any) -> None:
        """In a value and in a key; the rest of the body is the job as received."""
        result, job_id = await self._poll(sim, session, "lone_surrogate")
        assert result.outcome is PollOutcome.OK and result.body is not None
        assert result.body["error"] == "\ufffd oops"
        assert result.body["note\ufffd"] == "lone low surrogate in the key"
        assert (result.body["id"], result.body["status"]) == (job_id, "failed")

    async def test_nan_infinity_and_1e400_become_null(self, sim: Any, session: Any) -> None:
        """NaN, Infinity, -Infinity and 1e400 (inf to Python) are null."""
        result, _ = await self._poll(sim, session, "nan")
        assert result.outcome is PollOutcome.OK and result.body is not None
        assert [result.body[k] for k in ("progress", "eta_s", "floor", "big")] == [None] * 4

    async def test_a_huge_integer_is_kept_as_its_digits(self, sim: Any, session: Any) -> None:
        """5,000 digits are more than int() reads: the body is OK with the digit string."""
        result, _ = await self._poll(sim, session, "huge_int")
        assert result.outcome is PollOutcome.OK and result.body is not None
        assert result.body["count"] == "9" * 5000

    async def test_deep_nesting_is_an_invalid_response(self, sim: Any, session: Any) -> None:
        """100,000 levels: INVALID_RESPONSE naming the limit, no RecursionError; the next poll is fine."""
        _, url = sim
        result, job_id = await self._poll(sim, session, "deep_nesting")
        assert (result.outcome, result.body) == (PollOutcome.INVALID_RESPONSE, None)
        assert "deeper than 64" in result.detail
        assert (await client(session, url).get_job(job_id, SLUG)).outcome is PollOutcome.OK

    async def test_a_grown_status_is_ok_and_logged_once(self, sim: Any, session: Any) -> None:
        """`cancelled` is the upstream's word (OK, body as received), logged once per process."""
        simulator, url = sim
        up = client(session, url)
        job = simulator.add_job(status="active")
        simulator.force_fault(job.id, "poison", count=3, variant="grown_status")
        with capture_logs() as logs:
            results = [await up.get_job(job.id, SLUG) for _ in range(3)]
        assert all(
            r.outcome is PollOutcome.OK and r.body and r.body["status"] == "cancelled" for r in results
        )
        assert [e["status"] for e in logs if e["event"] == "upstream.grown_status"] == ["cancelled"]

    async def test_max_body_bytes_is_configurable(self, canned: Any, session: Any) -> None:
        """A body over the client's `max_body_bytes` is INVALID_RESPONSE; the same body fits a bigger one."""
        answers, _, url = canned
        body = job_body(JOB, padding="x" * 3000)
        for limit, outcome in ((2048, PollOutcome.INVALID_RESPONSE), (8192, PollOutcome.OK)):
            answers.append(web.json_response(body))
            up = UpstreamClient(session, {SLUG: creds(url)}, 5.0, max_body_bytes=limit)
            result = await up.get_job(JOB, SLUG)
            assert result.outcome is outcome, result.detail
            assert outcome is PollOutcome.OK or f"larger than {limit} bytes" in result.detail

    @pytest.mark.parametrize(
        ("body", "detail"),
        [
            (_raw(status='""'), "'status'"),
            (_raw(status='"  "'), "'status'"),
            (_raw(updated='"a\\u0000b"'), "'updatedAt'"),
            (_raw(updated='"' + "9" * 65 + '"'), "'updatedAt'"),
        ],
    )  # fmt: skip
    async def test_invalid_required_fields(self, canned: Any, session: Any, body: bytes, detail: str) -> None:
        """A blank status, or an updatedAt that cannot be a timestamp (it goes into a text column and the
        event id), is INVALID_RESPONSE (SPEC §16: required fields that are invalid)."""
        answers, _, url = canned
        answers.append(web.Response(body=body, content_type="application/json"))
        result = await client(session, url).get_job(JOB, SLUG)
        assert result.outcome is PollOutcome.INVALID_RESPONSE and detail in result.detail
