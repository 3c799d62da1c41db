"""The alert formats' config keys (SPEC §15): what each format needs, the routing filters, and secrets
that never show (check-config, reprs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support import config
from watcher.config import Settings, render_config
from watcher.daemon.parts import webhook_filters, webhook_targets
from watcher.errors import ConfigError

UP = "http://127.0.0.1:9"
KEY = "R0UT1NGK3Y-S3CRET-0123456789abcdef"


def load(tmp_path: Path, **hook: Any) -> Settings:
    return config.settings(tmp_path, UP, webhooks=[{"name": "h", **hook}])


def problems(tmp_path: Path, **hook: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, **hook)
    return info.value.problems


def test_pagerduty_needs_a_routing_key_and_defaults_its_url(tmp_path: Path) -> None:
    """No routing key: an error naming it; with one, url defaults to PagerDuty's enqueue endpoint."""
    assert problems(tmp_path, format="pagerduty")[0].startswith("webhooks[0].routing_key: required")
    hook = load(tmp_path, format="pagerduty", routing_key=KEY).webhooks[0]
    assert hook.url == "https://events.pagerduty.com/v2/enqueue"


def test_routing_key_file_is_read_and_never_shown(tmp_path: Path) -> None:
    """routing_key_file is read into the key; check-config shows its path, the target's repr hides it."""
    secret = tmp_path / "rk"
    secret.write_text(KEY + "\n")
    settings = load(tmp_path, format="pagerduty", routing_key_file=str(secret))
    [target] = webhook_targets(settings).values()
    assert target.format_settings.routing_key == KEY
    assert KEY not in render_config(settings) and KEY not in repr(target) and KEY not in repr(settings)
    inline = load(tmp_path, format="pagerduty", routing_key=KEY)
    assert KEY not in render_config(inline)
    assert problems(tmp_path, format="pagerduty", routing_key=KEY, routing_key_file=str(secret))[
        0
    ].startswith("webhooks[0].routing_key_file: cannot be combined")


def test_template_keys(tmp_path: Path) -> None:
    """format template needs template or template_file (read at load), not both; other formats take none."""
    assert problems(tmp_path, format="template", url=UP)[0].startswith("webhooks[0].template: required")
    body = tmp_path / "t.j2"
    body.write_text('{"t": {{ type | tojson }}}')
    hook = load(tmp_path, format="template", url=UP, template_file=str(body)).webhooks[0]
    assert hook.template == '{"t": {{ type | tojson }}}'
    both = problems(tmp_path, format="template", url=UP, template="{}", template_file=str(body))
    assert both[0].startswith("webhooks[0].template_file: cannot be combined")
    missing = problems(tmp_path, format="template", url=UP, template_file=str(tmp_path / "nope"))
    assert missing[0].startswith("webhooks[0].template_file: cannot read")
    assert problems(tmp_path, format="slack", url=UP, template="{}")[0].startswith(
        "webhooks[0].template: only"
    )
    bad_type = problems(tmp_path, format="template", url=UP, template="{}", content_type="json")
    assert bad_type[0].startswith("webhooks[0].content_type:")


@pytest.mark.parametrize("fmt", ["discord", "msteams", "slack"])
def test_chat_urls_are_credentials(tmp_path: Path, fmt: str) -> None:
    """An incoming-webhook URL carries its token in the path: check-config masks the path."""
    text = render_config(load(tmp_path, format=fmt, url="https://chat.example.com/api/webhooks/1/T0KEN"))
    assert "T0KEN" not in text


def test_alertmanager_posts_to_the_alerts_api(tmp_path: Path) -> None:
    """url is Alertmanager's base URL; the target posts to {url}/api/v2/alerts."""
    settings = load(tmp_path, format="alertmanager", url="http://127.0.0.1:9093/", alert_duration_s=60)
    [target] = webhook_targets(settings).values()
    assert target.url == "http://127.0.0.1:9093/api/v2/alerts"
    assert target.format_settings.alert_duration_s == 60


def test_routing_filters(tmp_path: Path) -> None:
    """workspaces and labels (an inline table) become the webhook's filter."""
    settings = load(
        tmp_path,
        format="slack",
        url=UP,
        workspaces=["acme"],
        labels={"team": "billing"},
        events=["job.failed"],
    )
    [f] = webhook_filters(settings, webhook_targets(settings))
    assert (f.name, f.events, f.workspaces, dict(f.labels)) == (
        "h",
        frozenset({"job.failed"}),
        frozenset({"acme"}),
        {"team": "billing"},
    )
    assert problems(tmp_path, format="slack", url=UP, workspaces=[])[0].startswith("webhooks[0].workspaces:")
    typo = problems(tmp_path, format="slack", url=UP, workspaces=["acme", "acm"])
    assert typo == ["webhooks[0].workspaces[1]: unknown workspace 'acm'"]


@pytest.mark.parametrize(
    ("fmt", "extra"),
    [("slack", {}), ("msteams", {}), ("discord", {}), ("pagerduty", {"routing_key": KEY})],
)
def test_group_window_on_the_chat_and_pager_formats(tmp_path: Path, fmt: str, extra: dict[str, Any]) -> None:
    """group_window_s (default 0, off) reaches the target on the formats that group (SPEC §15)."""
    assert load(tmp_path, format=fmt, url=UP, **extra).webhooks[0].group_window_s == 0
    settings = load(tmp_path, format=fmt, url=UP, group_window_s=30, **extra)
    [target] = webhook_targets(settings).values()
    assert target.group_window_s == 30.0
    assert "group_window_s = 30.0" in render_config(settings)


@pytest.mark.parametrize(
    ("fmt", "extra"),
    [
        ("standard", {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}),
        ("alertmanager", {}),
        ("template", {"template": "{}"}),
    ],
)
def test_group_window_refused_where_each_event_is_its_own_request(
    tmp_path: Path, fmt: str, extra: dict[str, Any]
) -> None:
    """standard, alertmanager and template send one event per request: a window is a config error naming
    the key; 0 is accepted (it is the default)."""
    [problem] = problems(tmp_path, format=fmt, url=UP, group_window_s=5, **extra)
    assert problem.startswith(
        "webhooks[0].group_window_s: only for formats slack, msteams, discord, pagerduty"
    )
    assert load(tmp_path, format=fmt, url=UP, group_window_s=0, **extra).webhooks[0].group_window_s == 0


def test_group_window_bounds(tmp_path: Path) -> None:
    """Not negative, at most an hour, and shorter than max_delivery_age_s."""
    for bad in (-1, 3601):
        assert problems(tmp_path, format="slack", url=UP, group_window_s=bad)[0].startswith(
            "webhooks[0].group_window_s:"
        )
    short = problems(tmp_path, format="slack", url=UP, group_window_s=60, max_delivery_age_s=60)
    assert short[0] == "webhooks[0].group_window_s: must be less than max_delivery_age_s"
