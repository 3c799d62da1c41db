"""Grouping (SPEC §15): one message for many events, Alertmanager-style, with an id from its members."""

from __future__ import annotations

import random
import uuid

import pytest

from tests.fixtures.vendor import rules
from tests.support.standard_webhooks import strict_json
from watcher.delivery.formats import GROUPABLE, FormatSettings, RenderError, group_id, render_group, summarize
from watcher.delivery.formats.grouping import GROUP_NAMESPACE
from watcher.models import Event

SETTINGS = FormatSettings(name="chat", routing_key="k" * 32)


def failure(i: int, workspace: str = "acme", name: str | None = None, kind: str = "failed") -> Event:
    """Job `i` of a batch import failing at second `i`."""
    job = {"id": f"job-{i:04d}", "status": kind, "error": f"row {i}: bad email"}
    if name is not None:
        job["name"] = name
    return Event(
        id=f"event-{i:04d}",
        job_id=f"job-{i:04d}",
        workspace=workspace,
        type=f"job.{kind}",
        created_at=1_775_000_000.0 + i,
        payload={"type": f"job.{kind}", "timestamp": "t", "data": {"job": job, "workspace": workspace}},
    )


class TestGroupId:
    """The group id is derived from the member event ids alone."""

    def test_same_members_in_any_order_give_the_same_id(self) -> None:
        """Order and repetition of the ids do not matter."""
        ids = [f"e{i}" for i in range(50)]
        shuffled = ids[:]
        random.Random(7).shuffle(shuffled)
        assert group_id(ids) == group_id(shuffled) == group_id(ids + ids[:5])

    def test_the_id_is_a_uuid5_of_the_sorted_ids(self) -> None:
        """The documented derivation, so that a restart or another replica computes the same id."""
        assert group_id(["b", "a"]) == str(uuid.uuid5(GROUP_NAMESPACE, "a\nb"))

    def test_other_members_give_another_id(self) -> None:
        """Adding or removing a member changes the id."""
        assert group_id(["a", "b"]) != group_id(["a", "b", "c"]) != group_id(["a"])

    def test_an_empty_group_is_refused(self) -> None:
        """A group needs at least one member."""
        with pytest.raises(RenderError):
            group_id([])


class TestSummary:
    """The title, the first ten listed and the rest counted by workspace and job name."""

    def test_fourteen_failures_in_one_workspace(self) -> None:
        """ "14 jobs failed in acme": ten listed oldest first, four counted by job name."""
        events = [failure(i, name="import.rows" if i % 2 else "import.header") for i in range(14)]
        random.Random(3).shuffle(events)
        group = summarize(events)
        assert group.title == "14 jobs failed in acme"
        assert [m.job_id for m in group.listed] == [f"job-{i:04d}" for i in range(10)]
        assert group.rest == (("acme", "import.header", 2), ("acme", "import.rows", 2))
        assert group.rest_count == 4 and group.rest_other == 0
        assert group.group_id == group_id(e.id for e in events)

    @pytest.mark.parametrize(
        ("events", "title"),
        [
            ([failure(1)], "1 job failed in acme"),
            ([failure(1), failure(2, "beta")], "2 jobs failed in 2 workspaces"),
            (
                [failure(1), failure(2), failure(3, kind="expired")],
                "3 job events in acme: 2 failed, 1 expired",
            ),
            ([failure(1, kind="slow"), failure(2, kind="slow")], "2 jobs are slow in acme"),
            ([failure(1, kind="cancelled")], "1 job is now cancelled in acme"),
        ],
    )
    def test_titles(self, events: list[Event], title: str) -> None:
        """The title counts the members and says what happened and where."""
        assert summarize(events).title == title

    def test_eight_hundred_failures_add_up(self) -> None:
        """800 failures over 3 workspaces and 30 job names: 10 listed, the rest counted, totals add up."""
        events = [failure(i, ("acme", "beta", "gamma")[i % 3], f"import.{i % 30}") for i in range(800)]
        group = summarize(events)
        assert group.count == 800
        assert len(group.listed) == 10
        assert len(group.rest) <= 20
        assert len(group.listed) + sum(n for _, _, n in group.rest) + group.rest_other == 800
        assert group.title == "800 jobs failed in 3 workspaces"

    def test_an_empty_group_is_refused(self) -> None:
        """Summarising nothing is an error, not an empty message."""
        with pytest.raises(RenderError):
            summarize([])


class TestGroupedMessages:
    """One valid message per group, in every groupable format."""

    EVENTS = [failure(i, ("acme", "beta")[i % 2], f"import.{i % 7}") for i in range(800)]

    def test_groupable_formats_are_the_chat_and_pager_ones(self) -> None:
        """SPEC §15: slack, msteams, discord and pagerduty group; the others do not."""
        assert frozenset({"slack", "msteams", "discord", "pagerduty"}) == GROUPABLE
        for fmt in ("standard", "alertmanager", "template"):
            with pytest.raises(RenderError, match="does not group"):
                render_group(fmt, self.EVENTS, SETTINGS)

    def test_pagerduty_group_is_one_trigger_with_the_group_id(self) -> None:
        """dedup_key is the group id; custom_details carries the count and the rest counted."""
        doc = rules.check_pagerduty(render_group("pagerduty", self.EVENTS, SETTINGS).body)
        assert doc["dedup_key"] == group_id(e.id for e in self.EVENTS)
        assert doc["payload"]["summary"] == "800 jobs failed in 2 workspaces"
        assert doc["payload"]["severity"] == "error"
        details = doc["payload"]["custom_details"]
        assert details["count"] == 800 and len(details["events"]) == 10
        assert sum(row["count"] for row in details["more"]) == 790

    def test_teams_discord_and_slack_groups_are_valid_and_say_the_count(self) -> None:
        """Each chat format's grouped message is valid for its vendor and leads with the title."""
        teams = rules.check_msteams(render_group("msteams", self.EVENTS, SETTINGS).body)
        assert teams["attachments"][0]["content"]["body"][0]["text"] == "800 jobs failed in 2 workspaces"
        discord = rules.check_discord(render_group("discord", self.EVENTS, SETTINGS).body)
        assert discord["content"] == "800 jobs failed in 2 workspaces"
        assert sum(int(f["value"]) for f in discord["embeds"][0]["fields"]) == 790
        slack = strict_json(render_group("slack", self.EVENTS, SETTINGS).body)["text"]
        assert "800 jobs failed in 2 workspaces" in slack and "and 790 more" in slack

    def test_the_same_group_renders_the_same_bytes_in_any_order(self) -> None:
        """Rendering is pure: shuffled members give byte-identical bodies."""
        shuffled = self.EVENTS[:]
        random.Random(11).shuffle(shuffled)
        for fmt in sorted(GROUPABLE):
            assert render_group(fmt, self.EVENTS, SETTINGS).body == render_group(fmt, shuffled, SETTINGS).body
