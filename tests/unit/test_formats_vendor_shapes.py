"""Each alert format against its vendor's documented shape and limits (SPEC §15).

The rules are in tests/fixtures/vendor/ (JSON Schemas and rules.py); each names its source page there:
- PagerDuty: "Send an Alert Event", https://developer.pagerduty.com/docs/events-api-v2/trigger-events/
  (routing_key, event_action, dedup_key ≤ 255, payload.summary ≤ 1024, source, severity enum) and "Events
  API v2 Overview", Size Limits (512 KB).
- Teams: Microsoft Learn "Send Adaptive Cards using an Incoming Webhook" (the `message` envelope) and
  "Create an Incoming Webhook" (Workflows trigger, 28 KB); Adaptive Card schema 1.4.0.
- Discord: "Webhook Resource", Execute Webhook (content ≤ 2000, ≤ 10 embeds) and "Message Resource",
  Embed Limits (title 256, description 4096, 25 fields, name 256, value 1024, footer 2048, total 6000).
- Alertmanager: api/v2/openapi.yaml `postableAlerts`, alert/alert.go `Validate`, api/v2/api.go
  `removeEmptyLabels`; Prometheus "Alerts API" page (alertname required, RFC 3339 times).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.fixtures.vendor import rules
from watcher.delivery.formats import FormatSettings, RenderError, render
from watcher.delivery.formats import alertmanager as am
from watcher.delivery.formats import pagerduty as pd
from watcher.delivery.formats.template import SAMPLE_EVENT
from watcher.models import Event

ROUTING_KEY = "R0UT1NGK3Y0123456789abcdefABCDEF"  # 32 characters, like an integration key
SETTINGS = FormatSettings(name="oncall", routing_key=ROUTING_KEY)


def event(kind: str = "failed", **job: Any) -> Event:
    """The sample event with its type set to `job.<kind>` and `job` fields merged into its job."""
    payload = copy.deepcopy(SAMPLE_EVENT.payload)
    payload["type"] = f"job.{kind}"
    payload["data"]["job"].update(job)
    return Event(
        id=SAMPLE_EVENT.id,
        job_id=SAMPLE_EVENT.job_id,
        workspace="acme",
        type=f"job.{kind}",
        created_at=SAMPLE_EVENT.created_at,
        payload=payload,
    )


class TestPagerDuty:
    """Format `pagerduty`: an Events API v2 trigger."""

    def test_the_sample_event_is_a_valid_trigger_with_the_spec_fields(self) -> None:
        """routing_key, trigger, dedup_key = job id, summary, source = workspace, custom_details = data."""
        doc = rules.check_pagerduty(render("pagerduty", SAMPLE_EVENT, SETTINGS).body)
        assert doc["routing_key"] == ROUTING_KEY
        assert doc["event_action"] == "trigger"
        assert doc["dedup_key"] == SAMPLE_EVENT.job_id
        payload = doc["payload"]
        assert payload["summary"] == (
            'customer.createBatch (5135bfe3) failed in acme: row 17: "email" is not an email address'
        )
        assert payload["source"] == "acme"
        assert payload["severity"] == "error"
        assert payload["custom_details"] == SAMPLE_EVENT.payload["data"]
        assert payload["timestamp"] == "2026-04-01T10:18:43.120Z"

    @pytest.mark.parametrize(
        ("kind", "severity"),
        [
            ("failed", "error"),
            ("expired", "warning"),
            ("missing", "warning"),
            ("success", "info"),
            ("slow", "info"),
            ("cancelled", "info"),
            ("upstream_expired", "info"),
        ],
    )
    def test_severity_follows_the_event(self, kind: str, severity: str) -> None:
        """failed → error, expired/missing → warning, everything else (grown statuses too) → info."""
        doc = rules.check_pagerduty(render("pagerduty", event(kind), SETTINGS).body)
        assert doc["payload"]["severity"] == severity

    def test_a_huge_error_keeps_the_summary_at_1024_and_the_body_under_512_kb(self) -> None:
        """A 3 MB error is cut in the summary and clipped in custom_details; the body stays valid."""
        body = render("pagerduty", event(error="E" * 3_000_000), SETTINGS).body
        doc = rules.check_pagerduty(body)
        assert rules.units(doc["payload"]["summary"]) <= 1024
        assert doc["payload"]["summary"].endswith("…")
        assert len(body) <= pd.MAX_BODY_BYTES

    def test_a_long_job_id_keeps_the_dedup_key_at_255(self) -> None:
        """dedup_key is at most 255 characters, even for a job id of 1000 astral characters."""
        long_id = "🚀" * 1000
        doc = rules.check_pagerduty(
            render("pagerduty", Event("e", long_id, "acme", "job.failed", 0.0, {}), SETTINGS).body
        )
        assert rules.units(doc["dedup_key"]) <= 255

    def test_default_url_is_the_enqueue_endpoint(self) -> None:
        """Without `url`, a pagerduty webhook posts to PagerDuty's Events API v2 enqueue endpoint."""
        assert pd.DEFAULT_URL == "https://events.pagerduty.com/v2/enqueue"

    def test_the_routing_key_is_never_in_a_repr_or_an_error(self) -> None:
        """The settings' repr hides the key; a render error (here: no key) never quotes one."""
        assert ROUTING_KEY not in repr(SETTINGS)
        assert "<hidden>" in repr(SETTINGS)
        with pytest.raises(RenderError) as caught:
            render("pagerduty", SAMPLE_EVENT, FormatSettings(name="oncall", routing_key="   "))
        assert "routing_key" in caught.value.reason
        bad = FormatSettings(name="oncall", routing_key=ROUTING_KEY, template="{{ nope }}")
        with pytest.raises(RenderError) as caught:
            render("template", SAMPLE_EVENT, bad)
        assert ROUTING_KEY not in str(caught.value) and ROUTING_KEY not in repr(bad)


class TestMSTeams:
    """Format `msteams`: a Workflows post with an Adaptive Card 1.4."""

    def test_the_sample_event_is_a_valid_post_with_title_facts_and_error(self) -> None:
        """The envelope, the card version 1.4, a title, a FactSet of the job and the error."""
        doc = rules.check_msteams(render("msteams", SAMPLE_EVENT, SETTINGS).body)
        assert doc["type"] == "message"
        (attachment,) = doc["attachments"]
        assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
        card = attachment["content"]
        assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
        title, facts, error = card["body"]
        assert title["text"] == "customer.createBatch (5135bfe3) failed"
        assert {"title": "Workspace", "value": "acme"} in facts["facts"]
        assert {"title": "Label team", "value": "billing"} in facts["facts"]
        assert error["text"] == 'row 17: "email" is not an email address'

    def test_a_huge_error_and_many_labels_stay_within_28_kb(self) -> None:
        """A 1 MB error of control characters (6 bytes each in JSON) still gives a post of at most 28 KB."""
        hostile = event(error="\x01" * 1_000_000)
        labels = {f"k{i}": "\x02" * 500 for i in range(200)}
        hostile.payload["data"]["labels"] = labels
        body = render("msteams", hostile, SETTINGS).body
        rules.check_msteams(body)
        assert len(body) <= 28_000


class TestDiscord:
    """Format `discord`: content and one embed within Discord's limits."""

    def test_the_sample_event_is_a_valid_message(self) -> None:
        """content is the summary line; the embed has title, error, fields and no mentions allowed."""
        doc = rules.check_discord(render("discord", SAMPLE_EVENT, SETTINGS).body)
        assert doc["content"].startswith("customer.createBatch (5135bfe3) failed in acme")
        assert doc["allowed_mentions"] == {"parse": []}
        (embed,) = doc["embeds"]
        assert embed["title"] == "customer.createBatch (5135bfe3) failed"
        assert embed["description"] == 'row 17: "email" is not an email address'
        assert {"name": "Workspace", "value": "acme", "inline": True} in embed["fields"]

    def test_whitespace_only_and_huge_texts_are_trimmed_and_cut(self) -> None:
        """A blank name and status and a huge astral error still give non-empty values within limits."""
        hostile = event(error="😀" * 100_000, name="   ", status="\n\t ")
        doc = rules.check_discord(render("discord", hostile, SETTINGS).body)
        assert doc["embeds"][0]["description"].endswith("…")


class TestAlertmanager:
    """Format `alertmanager`: a postableAlerts list Alertmanager accepts."""

    def test_the_sample_event_is_a_valid_alert_with_the_spec_labels(self) -> None:
        """alertname JobFailed, job labels, summary and error annotations, endsAt = startsAt + 1 h."""
        (alert,) = rules.check_alertmanager(render("alertmanager", SAMPLE_EVENT, SETTINGS).body)
        assert alert["labels"] == {
            "alertname": "JobFailed",
            "job_id": SAMPLE_EVENT.job_id,
            "job_name": "customer.createBatch",
            "workspace": "acme",
            "job_status": "failed",
        }
        assert alert["annotations"]["error"] == 'row 17: "email" is not an email address'
        assert alert["startsAt"] == "2026-04-01T10:18:43.120Z"
        assert alert["endsAt"] == "2026-04-01T11:18:43.120Z"
        assert "generatorURL" not in alert

    @pytest.mark.parametrize(
        ("kind", "name"),
        [
            ("failed", "JobFailed"),
            ("expired", "JobExpired"),
            ("missing", "JobMissing"),
            ("slow", "JobSlow"),
            ("cancelled", "JobCancelled"),
            ("upstream_expired", "JobUpstreamExpired"),
            ("unknown", "JobUnknown"),
        ],
    )
    def test_alertname_is_job_and_the_event_name_in_camel_case(self, kind: str, name: str) -> None:
        """SPEC §15's alertname, for the watcher's own events and grown statuses alike."""
        (alert,) = rules.check_alertmanager(render("alertmanager", event(kind), SETTINGS).body)
        assert alert["labels"]["alertname"] == name

    def test_duration_and_generator_url_come_from_the_settings(self) -> None:
        """alert_duration_s sets endsAt; generatorURL is sent when configured."""
        settings = FormatSettings(alert_duration_s=60, generator_url="https://watcher.example/jobs")
        (alert,) = rules.check_alertmanager(render("alertmanager", SAMPLE_EVENT, settings).body)
        assert alert["endsAt"] == "2026-04-01T10:19:43.120Z"
        assert alert["generatorURL"] == "https://watcher.example/jobs"

    def test_empty_label_values_are_left_out_and_a_nameless_job_still_validates(self) -> None:
        """An expired job has no name: its alert has no job_name label rather than an empty one."""
        expired = Event(
            "e", "j1", "acme", "job.expired", 10.0, {"data": {"job": {"id": "j1"}, "reason": "7d"}}
        )
        (alert,) = rules.check_alertmanager(render("alertmanager", expired, SETTINGS).body)
        assert "job_name" not in alert["labels"]
        assert alert["annotations"]["error"] == "7d"

    def test_the_alerts_url_is_the_base_url_with_the_api_path(self) -> None:
        """`url` is the Alertmanager's base URL; the body goes to {url}/api/v2/alerts."""
        assert am.alerts_url("http://127.0.0.1:9093/") == "http://127.0.0.1:9093/api/v2/alerts"


class TestTheRulesCanFail:
    """The vendor checks refuse bodies that break the documented rules (so a pass means something)."""

    def pagerduty(self, **change: Any) -> bytes:
        doc = json.loads(render("pagerduty", SAMPLE_EVENT, SETTINGS).body)
        doc["payload"].update(change)
        return json.dumps(doc).encode()

    @pytest.mark.parametrize(
        "change", [{"severity": "fatal"}, {"summary": "x" * 1025}, {"summary": " "}, {"source": ""}]
    )
    def test_pagerduty_rules(self, change: dict[str, Any]) -> None:
        """An unknown severity, a summary over 1024 or blank, an empty source are refused."""
        with pytest.raises(rules.VendorRuleBroken):
            rules.check_pagerduty(self.pagerduty(**change))

    def test_pagerduty_size(self) -> None:
        """A body over 512 KB is refused."""
        with pytest.raises(rules.VendorRuleBroken):
            rules.check_pagerduty(self.pagerduty(custom_details={"x": "y" * 600_000}))

    def test_teams_rules(self) -> None:
        """A property the Adaptive Card schema does not have, or version 1.5, is refused."""
        doc = json.loads(render("msteams", SAMPLE_EVENT, SETTINGS).body)
        doc["attachments"][0]["content"]["body"][0]["msteams"] = {"width": "Full"}
        with pytest.raises(rules.VendorRuleBroken):
            rules.check_msteams(json.dumps(doc).encode())
        doc = json.loads(render("msteams", SAMPLE_EVENT, SETTINGS).body)
        doc["attachments"][0]["content"]["version"] = "1.5"
        with pytest.raises(rules.VendorRuleBroken):
            rules.check_msteams(json.dumps(doc).encode())

    @pytest.mark.parametrize(
        ("path", "value"),
        [
            ("title", "t" * 257),
            ("description", "😀" * 2049),
            ("footer", {"text": "  "}),
            ("fields", [{"name": "n", "value": "v"}] * 26),
            ("fields", [{"name": "n" * 200, "value": "v" * 1000}] * 6),
        ],
    )
    def test_discord_rules(self, path: str, value: Any) -> None:
        """Each embed limit, the blank required footer and the 6000 total are refused."""
        doc = json.loads(render("discord", SAMPLE_EVENT, SETTINGS).body)
        doc["embeds"][0][path] = value
        with pytest.raises(rules.VendorRuleBroken):
            rules.check_discord(json.dumps(doc).encode())

    @pytest.mark.parametrize(
        "change",
        [
            {"labels": {"job-id": "x", "alertname": "A"}},
            {"labels": {"alertname": ""}},
            {"endsAt": "2000-01-01T00:00:00Z"},
            {"startsAt": "yesterday"},
        ],
    )
    def test_alertmanager_rules(self, change: dict[str, Any]) -> None:
        """An invalid label name, no label left, an end before the start, a non-RFC 3339 time."""
        (alert,) = json.loads(render("alertmanager", SAMPLE_EVENT, SETTINGS).body)
        alert.update(change)
        with pytest.raises(rules.VendorRuleBroken):
            rules.check_alertmanager(json.dumps([alert]).encode())
