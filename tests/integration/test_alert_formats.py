"""The alert formats wired into the real daemon (SPEC §15): a failed job reaches a loopback receiver in
each format, and each body keeps its vendor's documented rules (tests/fixtures/vendor/, which names the
source of every rule); a template that fails on an event's data makes that delivery dead with its reason;
a broken template refuses to start (exit 2 naming `webhooks[i].template`)."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from tests.fixtures.vendor import rules
from tests.support import config
from tests.support.daemon import InProcessDaemon
from tests.support.eventually import eventually
from tests.support.ports import free_port
from tests.unit.test_formats_sandbox_escapes import ESCAPES, LEAKS
from watcher.cli.main import main
from watcher.devtools.receiver import Receiver
from watcher.devtools.simulate import Simulator
from watcher.errors import ConfigError

SECRET = "whsec_" + base64.b64encode(b"alert-formats-integration").decode()
ROUTING_KEY = "R0UT1NGK3Y0123456789abcdefABCDEF"
ERROR = 'row 17: "email" is not an email address'
TEMPLATE = (
    '{"text": {{ (data.job.name ~ " " ~ type ~ ": " ~ data.job.error) | tojson }}, "n": {{ data.polls }}}'
)


class RawReceiver(Receiver):
    """A verifying receiver that also keeps each request's exact bytes and path, by webhook id."""

    def __init__(self) -> None:
        super().__init__([SECRET])
        self.raw: dict[str, bytes] = {}

    def check(self, headers: Mapping[str, str], body: bytes, now: float) -> tuple[str, int]:
        msg_id, timestamp = super().check(headers, body, now)
        self.raw[msg_id] = body
        return msg_id, timestamp


@pytest.fixture
async def receivers() -> AsyncIterator[dict[str, RawReceiver]]:
    hooks = {name: RawReceiver() for name in ("pagerduty", "msteams", "discord", "alertmanager", "template")}
    for r in hooks.values():
        await r.start()
    yield hooks
    for r in hooks.values():
        await r.stop()


def hook(fmt: str, url: str, **keys: Any) -> dict[str, Any]:
    return {"name": fmt, "url": url, "format": fmt, "secret": SECRET, "events": ["job.failed"], **keys}


CHECKS: dict[str, Callable[[bytes], Any]] = {
    "pagerduty": rules.check_pagerduty,
    "msteams": rules.check_msteams,
    "discord": rules.check_discord,
    "alertmanager": rules.check_alertmanager,
}


async def test_each_format_reaches_its_receiver_within_the_vendor_rules(
    tmp_path: Path, sim: Simulator, receivers: dict[str, RawReceiver]
) -> None:
    """One failed job: each format's body arrives signed, keeps its vendor's rules and says what
    `standard` says (job id, workspace, error); alertmanager posts to {url}/api/v2/alerts."""
    assert sim.url is not None
    urls = {name: r.url for name, r in receivers.items()}
    assert all(urls.values())
    hooks = [
        hook("pagerduty", f"{urls['pagerduty']}enqueue", routing_key=ROUTING_KEY),
        hook("msteams", f"{urls['msteams']}workflows/x"),
        hook("discord", f"{urls['discord']}api/webhooks/1/t"),
        hook("alertmanager", f"{urls['alertmanager']}am", alert_duration_s=600),
        hook("template", f"{urls['template']}custom", template=TEMPLATE, content_type="application/json"),
    ]
    job = sim.add_job(status="active").id
    (tmp_path / "watchlist.txt").write_text(job + "\n")
    settings = config.settings(tmp_path, sim.url, port=free_port(), webhooks=hooks)
    daemon = InProcessDaemon(settings)
    with capture_logs() as logs:
        await daemon.start()
        try:
            await eventually(lambda: len(sim.requests(job)) >= 1)
            sim.set_status(job, "failed", ERROR)
            for r in receivers.values():
                await r.wait_for(1, within_s=15)
        finally:
            assert await daemon.stop() == 0
    assert ROUTING_KEY not in repr(logs)  # the routing key is a secret: in the body, never in a log line
    bodies = {name: r.raw[r.ids()[0]] for name, r in receivers.items()}
    headers = {name: r.deliveries[0].headers for name, r in receivers.items()}

    pd = CHECKS["pagerduty"](bodies["pagerduty"])
    assert pd["routing_key"] == ROUTING_KEY and pd["dedup_key"] == job
    assert pd["payload"]["source"] == "acme" and pd["payload"]["severity"] == "error"
    assert ERROR in pd["payload"]["summary"]
    assert pd["payload"]["custom_details"]["job"]["id"] == job

    teams = CHECKS["msteams"](bodies["msteams"])
    assert teams["attachments"][0]["content"]["version"] == "1.4"
    assert job[:8] in bodies["msteams"].decode()

    discord = CHECKS["discord"](bodies["discord"])
    assert job[:8] in str(discord)

    [am] = CHECKS["alertmanager"](bodies["alertmanager"])
    assert am["labels"]["alertname"] == "JobFailed" and am["labels"]["job_id"] == job
    assert am["labels"]["workspace"] == "acme" and am["annotations"]["error"] == ERROR
    delta = rules.rfc3339_time(am["endsAt"]) - rules.rfc3339_time(am["startsAt"])
    assert delta.total_seconds() == 600

    assert receivers["template"].deliveries[0].body["text"] == f"customer.createBatch job.failed: {ERROR}"
    for name in receivers:
        assert headers[name]["Content-Type"] == "application/json"


async def test_a_template_failing_on_an_event_makes_that_delivery_dead_with_the_reason(
    tmp_path: Path, sim: Simulator
) -> None:
    """A template valid for the sample event but failing on this one (a field it lacks): the delivery is
    dead at once (DeadReason.RENDER_FAILED) with the template's error, listed by the API; the receiver
    gets nothing for it."""
    assert sim.url is not None
    receiver = RawReceiver()
    url = await receiver.start()
    # The sample event has an error; a successful job's is null, and null has no first character.
    template = '{"initial": {{ data.job.error[0] | tojson }}}'
    hooks = [
        hook("template", url, template=template, events=["job.success"]),
        {"name": "std", "url": url, "secret": SECRET},
    ]
    job = sim.add_job(status="success").id
    (tmp_path / "watchlist.txt").write_text(job + "\n")
    settings = config.settings(tmp_path, sim.url, port=free_port(), webhooks=hooks)
    daemon = InProcessDaemon(settings)
    await daemon.start()
    try:
        async with aiohttp.ClientSession() as http:

            async def dead() -> list[Any] | None:
                async with http.get(f"{daemon.base}/v1/deliveries?state=dead") as r:
                    items = (await r.json())["deliveries"]
                return items or None

            await receiver.wait_for(1, within_s=15)  # the standard webhook's delivery of job.success
            items = await eventually(dead, 15, "a dead delivery")
    finally:
        assert await daemon.stop() == 0
        await receiver.stop()
    [item] = items
    assert item["webhook"] == "template"
    assert item["attempts"] == 1  # dead at once: the same event would fail the same way again
    assert item["last_error"].startswith("render failed: template: undefined: None has no element 0")
    assert [d.webhook_id for d in receiver.deliveries] == [item["event_id"]]


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ('{"a": {{ data.job.nme | tojson }}}', "undefined"),
        ('{"a": {{ type }', "line 1"),
        ('{"a": {{ type }}}', "not json"),
        ('{"a": {{ "".__class__ }}}', "template"),
    ],
)
def test_a_broken_template_is_a_config_error_naming_its_key(
    tmp_path: Path, template: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A template that does not compile or does not render the sample job.failed event: `check-config`
    exits 2 naming `webhooks[1].template` (so does `run`, below), and the daemon refuses to build."""
    hooks = [
        {"name": "std", "url": "http://127.0.0.1:9/", "secret": SECRET},
        hook("template", "http://127.0.0.1:9/", template=template),
    ]
    path = config.write_config(tmp_path, "http://127.0.0.1:9", webhooks=hooks)
    assert main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "webhooks[1].template: " in err, err
    assert reason in err.lower(), err
    with pytest.raises(ConfigError, match=r"webhooks\[1\]\.template"):
        InProcessDaemon(config.settings(tmp_path, "http://127.0.0.1:9", webhooks=hooks))


def test_run_exits_2_on_a_broken_template(tmp_path: Path) -> None:
    """`watcher run` (a process of its own) exits 2 with the key and the reason, before listening."""
    hooks = [hook("template", "http://127.0.0.1:9/", template='{"a": {{ data.job.nme | tojson }}}')]
    path = config.write_config(tmp_path, "http://127.0.0.1:9", webhooks=hooks)
    done = subprocess.run(
        [sys.executable, "-m", "watcher", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "webhooks[0].template: rendering a sample job.failed event: template: undefined" in done.stderr


async def test_workspaces_and_labels_route_events_in_the_daemon(tmp_path: Path, sim: Simulator) -> None:
    """Two failed jobs registered through the API, one labelled team=billing: the catch-all webhook gets
    both, `billing` (labels) only the labelled one, `acme` (workspaces) both, `other` (workspaces) none:
    each event's routing, as logged with its transition, names exactly the matching webhooks."""
    assert sim.url is not None
    receiver = RawReceiver()
    url = await receiver.start()
    other = {"upstream.workspaces.other": {"token": "other-token", "api_key": "other-key"}}
    hooks = [
        {"name": name, "url": url, "secret": SECRET, "events": ["job.failed"], **keys}
        for name, keys in (
            ("all", {}),
            ("billing", {"labels": {"team": "billing"}}),
            ("acme", {"workspaces": ["acme"]}),
            ("other", {"workspaces": ["other"]}),
        )
    ]
    billing = sim.add_job(status="failed", error=ERROR).id
    ops = sim.add_job(status="failed", error=ERROR).id
    settings = config.settings(tmp_path, sim.url, port=free_port(), webhooks=hooks, sections=other)
    daemon = InProcessDaemon(settings)
    with capture_logs() as logs:
        await daemon.start()
        try:
            async with aiohttp.ClientSession() as http:
                for job, team in ((billing, "billing"), (ops, "ops")):
                    body = {"job_id": job, "labels": {"team": team}}
                    async with http.post(f"{daemon.base}/v1/watches", json=body) as r:
                        assert r.status == 201, await r.text()
            await receiver.wait_for(5, within_s=15)
        finally:
            assert await daemon.stop() == 0
        await receiver.stop()
    routed = {e["job_id"]: e["webhooks"] for e in logs if e["event"] == "job.transition"}
    assert sorted(routed[billing]) == ["acme", "all", "billing"]
    assert sorted(routed[ops]) == ["acme", "all"]
    assert len(receiver.deliveries) == 5


@pytest.mark.parametrize(("name", "source", "why"), ESCAPES, ids=[name for name, _, _ in ESCAPES])
def test_every_published_sandbox_escape_is_refused_by_check_config(
    tmp_path: Path, name: str, source: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The escapes of tests/unit/test_formats_sandbox_escapes.py, each written into a config file as an
    operator would: `watcher check-config` exits 2 with one line naming `webhooks[0].template` and the
    reason the sandbox gave, and nothing of Python's internals in it."""
    hooks = [hook("template", "http://127.0.0.1:9/", template=source)]
    path = config.write_config(tmp_path, "http://127.0.0.1:9", webhooks=hooks)
    assert main(["check-config", "-c", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "configuration is invalid:" and len(lines) == 2, lines
    assert lines[1].startswith("  webhooks[0].template: ") and why in lines[1], lines
    assert not any(leak in lines[1] for leak in LEAKS), lines


TITLE_COUNT = re.compile(r"^(\d+) jobs? failed in acme$")


def title_count(title: str) -> int:
    """The count a grouped message's title says ("12 jobs failed in acme")."""
    m = TITLE_COUNT.match(title)
    assert m is not None, title
    return int(m.group(1))


async def test_grouped_pager_and_chat_formats_through_the_daemon(
    tmp_path: Path, sim: Simulator, receivers: dict[str, RawReceiver]
) -> None:
    """group_window_s on pagerduty, msteams and discord (SPEC §15): twelve failures reach each receiver as
    grouped messages within the vendor's rules whose counts add up to 12; PagerDuty's dedup_key is the
    message's webhook-id (the group's id)."""
    assert sim.url is not None
    grouped = ("pagerduty", "msteams", "discord")
    urls = {name: receivers[name].url for name in grouped}
    hooks = [
        hook("pagerduty", f"{urls['pagerduty']}enqueue", routing_key=ROUTING_KEY, group_window_s=1.0),
        hook("msteams", f"{urls['msteams']}workflows/x", group_window_s=1.0),
        hook("discord", f"{urls['discord']}api/webhooks/1/t", group_window_s=1.0),
    ]
    jobs = [sim.add_job(status="failed", error=ERROR, name=f"import.{i % 3}").id for i in range(12)]
    (tmp_path / "watchlist.txt").write_text("\n".join(jobs) + "\n")
    settings = config.settings(tmp_path, sim.url, port=free_port(), webhooks=hooks)
    daemon = InProcessDaemon(settings)

    def counts() -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for name in grouped:
            bodies = [receivers[name].raw[i] for i in receivers[name].ids()]
            docs = [CHECKS[name](b) for b in bodies]
            if name == "pagerduty":
                out[name] = [d["payload"]["custom_details"]["count"] for d in docs]
            elif name == "msteams":
                titles = [d["attachments"][0]["content"]["body"][0]["text"] for d in docs]
                out[name] = [title_count(t) for t in titles]
            else:
                out[name] = [title_count(d["content"]) for d in docs]
        return out

    def all_counted() -> dict[str, list[int]] | None:
        c = counts()
        return c if all(sum(v) >= len(jobs) for v in c.values()) else None

    await daemon.start()
    try:
        got = await eventually(all_counted, 20, "every failure counted by every grouped receiver")
    finally:
        assert await daemon.stop() == 0
    assert {name: sum(v) for name, v in got.items()} == dict.fromkeys(grouped, len(jobs))
    assert all(len(v) <= 4 for v in got.values()), got  # grouped: not one message per job
    pd = receivers["pagerduty"]
    for msg_id in pd.ids():
        assert CHECKS["pagerduty"](pd.raw[msg_id])["dedup_key"] == msg_id
