"""Every check of a job id, name or cursor refuses a trailing newline (issue 12).

Python's `$` also matches before a final "\\n", so `re.match(r"^…$", value)` lets `"<uuid>\\n"` through;
the checks use `fullmatch` (Python) or a pydantic pattern (whose Rust engine reads `$` as the end).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from watcher.config import load_config
from watcher.errors import ConfigError, StoreError
from watcher.http.v1.models import DeliveryListQuery, WatchCreate, WatchListQuery
from watcher.sources.watchlist import parse_watchlist
from watcher.store.postgres.conn import parse_url

JOB = "5135bfe3-b2c7-41f3-a44f-f4b58e7384df"
SUFFIXES = ["\n", "\r\n", "\n\n"]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize(
    ("model", "data", "field"),
    [
        (WatchCreate, {"job_id": JOB + "{}"}, "job_id"),
        (WatchCreate, {"job_id": JOB, "workspace": "acme{}"}, "workspace"),
        (WatchCreate, {"job_id": JOB, "webhooks": ["ops{}"]}, "webhooks"),
        (WatchCreate, {"job_id": JOB, "labels": {"team{}": "a"}}, "labels"),
        (WatchListQuery, {"label": "team{}:a"}, "label"),
        (DeliveryListQuery, {"cursor": "12{}"}, "cursor"),
        (DeliveryListQuery, {"webhook": "ops{}"}, "webhook"),
    ],
)
def test_api_models_refuse_a_trailing_newline(
    model: type[BaseModel], data: dict[str, Any], field: str, suffix: str
) -> None:
    """Each patterned field of a request refuses the value with a newline after it."""
    model.model_validate(json.loads(json.dumps(data).replace("{}", "")))  # the value itself is fine
    bad = json.loads(json.dumps(data).replace("{}", json.dumps(suffix)[1:-1]))
    with pytest.raises(ValidationError) as caught:
        model.model_validate(bad)
    assert caught.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_watchlist_refuses_a_trailing_newline_in_a_job_id(suffix: str) -> None:
    """A watch-list line is split on newlines, so a job id never carries one into the store."""
    entries, problems = parse_watchlist(f"{JOB}{suffix}", "acme", {"acme"})
    assert [e.job_id for e in entries] == [JOB] and problems == []


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_store_url_schema_refuses_a_trailing_newline(suffix: str) -> None:
    """`?schema=` names a PostgreSQL schema; `watcher\\n` is not one."""
    assert parse_url("postgresql://h/db?schema=watcher").schema == "watcher"
    with pytest.raises(StoreError, match="schema must be"):
        parse_url("postgresql://h/db?schema=watcher" + suffix.replace("\n", "%0A").replace("\r", "%0D"))


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize(
    ("key", "value"), [("workspace_slug", "acme"), ("workspace_id", "11111111-2222-3333-4444-555555555555")]
)
def test_config_refuses_a_trailing_newline(tmp_path: Path, key: str, value: str, suffix: str) -> None:
    """Config values checked by pattern (workspace slugs, ids) name the key when a newline follows."""
    env = {"WATCHER_UPSTREAM__TOKEN": "t", "WATCHER_UPSTREAM__API_KEY": "k"}
    defaults = {"workspace_slug": "acme"}
    text = "[upstream]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in {**defaults, key: value + suffix}.items()
    )
    path = tmp_path / "w.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)
    assert any(f"upstream.{key}" in p for p in caught.value.problems), caught.value.problems
    path.write_text(text.replace(json.dumps(value + suffix), json.dumps(value)))
    load_config(path, env=env)
