"""The one builder of test configurations: a fast daemon on loopback, written as TOML and loaded as
`watcher run` would load it.

`write_config` writes the file (for a daemon subprocess); `settings` loads it (for a daemon in this
process). Defaults: the simulator's credentials and workspace `acme`, fast polling, a free API port, a
SQLite file and a watch-list file in the test's directory. Every section can be overridden key by key
(`sections={"polling": {...}}`), added (`"upstream.workspaces.other"`), or dropped (`"watchlist": None`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from watcher.config import Settings, load_config

SIM_TOKEN, SIM_KEY, SIM_SLUG = "sim-token", "sim-key", "acme"
# Each webhook gets these unless it says otherwise: retries fast enough for a test.
HOOK_DEFAULTS: Mapping[str, Any] = {"retry_initial_s": 0.05, "retry_max_s": 0.2}

Section = Mapping[str, Any]
Sections = Mapping[str, Section | None]


def render(sections: Sections, webhooks: Sequence[Section] = ()) -> str:
    """TOML text: one table per section (a dotted name is a sub-table), then one `[[webhooks]]` each."""

    def body(values: Section) -> str:
        return "".join(f"{k} = {_value(v)}\n" for k, v in values.items() if not _tables(v))

    def tables(name: str, values: Section) -> str:  # a list of tables: `[[name.key]]` each
        return "".join(
            f"[[{name}.{k}]]\n{body(item)}\n" for k, v in values.items() if _tables(v) for item in v
        )

    text = "".join(
        f"[{name}]\n{body(values)}\n{tables(name, values)}"
        for name, values in sections.items()
        if values is not None
    )
    return text + "".join(f"[[webhooks]]\n{body(hook)}\n" for hook in webhooks)


def _tables(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)


def _value(v: Any) -> str:
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, Mapping):  # an inline table
        return "{" + ", ".join(f"{json.dumps(k)} = {_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)  # a JSON string, number, boolean or array is the same value in TOML


def write_config(
    tmp_path: Path,
    upstream_url: str,
    *,
    webhooks: Sequence[Section] = (),
    port: int | None = None,
    sections: Sections | None = None,
    name: str = "w.toml",
    hook_defaults: Section = HOOK_DEFAULTS,
) -> Path:
    """Write a fast test configuration to `tmp_path/name` and return its path (see the module's docstring).

    `port` is the API's (a free one if None); each webhook is `hook_defaults` with its own keys over them.
    """
    defaults: dict[str, dict[str, Any]] = {
        "upstream": {
            "base_url": upstream_url,
            "token": SIM_TOKEN,
            "api_key": SIM_KEY,
            "workspace_slug": SIM_SLUG,
        },
        "polling": {"initial_interval_s": 0.05, "max_interval_s": 0.2},
        "api": {"listen": f"127.0.0.1:{port or free_port()}"},
        "store": {"url": f"sqlite:///{tmp_path / 'w.db'}"},
        "watchlist": {"path": str(tmp_path / "watchlist.txt"), "reload_interval_s": 0.1},
        "daemon": {"shutdown_grace_s": 3.0},
    }
    merged: dict[str, Section | None] = dict(defaults)
    for section, values in (sections or {}).items():
        merged[section] = None if values is None else {**defaults.get(section, {}), **values}
    path = tmp_path / name
    path.write_text(render(merged, [{**hook_defaults, **hook} for hook in webhooks]))
    return path


def settings(
    tmp_path: Path,
    upstream_url: str,
    *,
    webhooks: Sequence[Section] = (),
    port: int | None = None,
    sections: Sections | None = None,
    hook_defaults: Section = HOOK_DEFAULTS,
) -> Settings:
    """`write_config`, loaded as the daemon loads it (no environment)."""
    path = write_config(
        tmp_path, upstream_url, webhooks=webhooks, port=port, sections=sections, hook_defaults=hook_defaults
    )
    return load_config(path, env={})
