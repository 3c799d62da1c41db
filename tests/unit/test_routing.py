"""Routing an event to webhooks (SPEC §6, §15): event types, `workspaces`, `labels` (all must match), and
the watch's own choice of webhooks."""

from __future__ import annotations

from watcher.events import WebhookFilter, route
from watcher.models import Watch

FAILED = frozenset({"job.failed", "job.slow"})


def watch(
    workspace: str = "acme", labels: dict[str, str] | None = None, webhooks: list[str] | None = None
) -> Watch:
    return Watch(
        job_id="5135bfe3-b2c7-41f3-a44f-f4b58e7384df",
        workspace=workspace,
        sources=1,
        registered_at=0.0,
        labels=labels or {},
        webhooks=None if webhooks is None else tuple(webhooks),
    )


FILTERS = [
    WebhookFilter("all", FAILED),
    WebhookFilter("pager-acme", frozenset({"job.failed"}), workspaces=frozenset({"acme"})),
    WebhookFilter("chat-rest", FAILED, workspaces=frozenset({"other", "third"})),
    WebhookFilter("billing", FAILED, labels={"team": "billing"}),
    WebhookFilter("billing-prod", FAILED, labels={"team": "billing", "env": "prod"}),
    WebhookFilter("slow", frozenset({"job.slow"})),
]


def test_workspaces_pick_the_watch_s_workspace() -> None:
    """Page on acme's failures, chat for the rest."""
    assert route("job.failed", watch("acme"), FILTERS) == ("all", "pager-acme")
    assert route("job.failed", watch("other"), FILTERS) == ("all", "chat-rest")


def test_labels_must_all_match() -> None:
    """Every label of the filter, key and value; extra labels on the watch do not matter."""
    assert route("job.failed", watch(labels={"team": "billing"}), FILTERS) == ("all", "pager-acme", "billing")
    both = watch(labels={"team": "billing", "env": "prod", "x": "y"})
    assert route("job.failed", both, FILTERS) == ("all", "pager-acme", "billing", "billing-prod")
    assert route("job.failed", watch(labels={"team": "ops", "env": "prod"}), FILTERS) == ("all", "pager-acme")


def test_event_types_and_the_watch_s_own_choice_still_apply() -> None:
    """job.slow goes to the low-urgency webhook (and the others that take it); a watch naming webhooks
    narrows the matching ones, it never adds one whose filter refuses."""
    assert route("job.slow", watch(), FILTERS) == ("all", "slow")
    assert route("job.failed", watch(webhooks=["billing", "pager-acme"]), FILTERS) == ("pager-acme",)
    assert route("job.success", watch(), FILTERS) == ()
