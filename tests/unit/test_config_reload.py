"""Tests of watcher.daemon.reload's checks: which keys need a restart, and what is refused before a swap."""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher.config import Settings, load_config
from watcher.config.api import ApiConfig
from watcher.daemon.reload import changed_keys, prepare
from watcher.errors import ConfigError
from watcher.http.clients import Clients

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def load(tmp_path: Path, text: str, name: str = "w.toml") -> Settings:
    path = tmp_path / name
    path.write_text(
        '[upstream]\ntoken_file = "{tok}"\napi_key = "k"\nworkspace_slug = "acme"\n\n'.format(
            tok=tmp_path / "token"
        )
        + text
    )
    return load_config(path, env={})


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("upstream-token-1\n")
    return path


def test_the_same_file_read_twice_changes_nothing(tmp_path: Path, token_file: Path) -> None:
    """Secrets read from files are read again at every load: the same content is no change."""
    text = '[api]\ntokens = ["t-0123456789"]\n[[webhooks]]\nname = "ops"\nurl = "http://127.0.0.1:9"\n'
    text += f'secret = "{SECRET}"\n'
    assert changed_keys(load(tmp_path, text), load(tmp_path, text)) == []


def test_changed_keys_name_every_restart_only_key_and_never_the_reloaded_ones(
    tmp_path: Path, token_file: Path
) -> None:
    """A secret file's new content, a sub-table added, a list that grew: each by its dotted name."""
    before = load(tmp_path, '[api]\ntokens = ["t-0123456789"]\n')
    token_file.write_text("upstream-token-2\n")
    after = load(
        tmp_path,
        '[api]\ntokens = ["other-0123456789"]\nmax_watches = 10\n[upstream.workspaces.eu]\n'
        '[callbacks]\nallow_networks = ["10.0.0.0/8"]\n'
        f'[[webhooks]]\nname = "ops"\nurl = "http://127.0.0.1:9"\nsecret = "{SECRET}"\n',
    )
    assert changed_keys(before, after) == [
        "upstream.token",
        "upstream.token_file",
        "upstream.workspaces.eu",
        "api.max_watches",
        "callbacks.allow_networks",
    ]


def test_a_client_of_a_workspace_the_running_daemon_does_not_know_is_refused(
    tmp_path: Path, token_file: Path
) -> None:
    """The new file adds a workspace (restart-only) and a client limited to it: the client cannot apply
    without the workspace, so the reload is refused, naming the key."""
    running = load(tmp_path, "")
    loaded = load(
        tmp_path,
        '[upstream.workspaces.eu]\n[[api.clients]]\nname = "eu"\ntoken = "eu-0123456789"\n'
        'workspaces = ["eu"]\n',
    )
    with pytest.raises(ConfigError) as info:
        prepare(running, loaded)
    assert info.value.problems == ["api.clients[0].workspaces[0]: unknown workspace 'eu'"]


def test_a_template_that_does_not_render_is_refused(tmp_path: Path, token_file: Path) -> None:
    """The same check as at start-up: a template is tried on a sample event before it is swapped in."""
    running = load(tmp_path, "")
    loaded = load(
        tmp_path,
        '[[webhooks]]\nname = "t"\nurl = "http://127.0.0.1:9"\nformat = "template"\n'
        f'secret = "{SECRET}"\ntemplate = "{{{{ event.nope.deeper }}}}"\n',
    )
    with pytest.raises(ConfigError) as info:
        prepare(running, loaded)
    assert info.value.problems[0].startswith("webhooks[0].template")
    r = prepare(running, load(tmp_path, ""))
    assert (r.targets, r.restart_required, r.webhooks_added) == ({}, [], [])


def test_a_client_that_keeps_its_name_and_rate_keeps_its_bucket() -> None:
    """A reload does not refill a rate limit (a client could otherwise burst past it with every SIGHUP);
    a changed rate starts a new bucket, and a changed token is the same client under its new token."""
    before = Clients(
        ApiConfig.model_validate(
            {"clients": [{"name": "ci", "token": "ci-0123456789", "rate_limit_per_s": 1}]}
        )
    )
    ci = before.find("ci-0123456789")
    assert ci is not None and ci.take(100.0) == 0.0 and ci.take(100.0) > 0  # its one request spent
    same = ApiConfig.model_validate(
        {"clients": [{"name": "ci", "token": "new-0123456789", "rate_limit_per_s": 1}]}
    )
    after = Clients(same, previous=before)
    assert after.find("ci-0123456789") is None
    moved = after.find("new-0123456789")
    assert moved is not None and moved.take(100.0) > 0  # still spent
    faster = ApiConfig.model_validate(
        {"clients": [{"name": "ci", "token": "new-0123456789", "rate_limit_per_s": 5}]}
    )
    fresh = Clients(faster, previous=before).find("new-0123456789")
    assert fresh is not None and fresh.take(100.0) == 0.0
