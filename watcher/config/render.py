"""`watcher check-config`: the effective configuration as TOML, every secret shown as ********."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from watcher.config.fields import SecretFile
from watcher.config.model import Settings

MASK = "********"
# Formats whose URL carries its own credential in the path (incoming webhooks, Workflows triggers).
_URL_IS_SECRET = frozenset({"slack", "discord", "msteams"})


def render_config(settings: Settings) -> str:
    """The effective configuration as TOML, with every secret shown as ********."""
    data = settings.model_dump(exclude_none=True)
    data["daemon"]["state_dir"] = str(settings.resolved_state_dir())
    data["store"]["url"] = _mask_url(settings.resolved_store_url())
    for hook, model in zip(data["webhooks"], settings.webhooks, strict=True):
        hook["headers"] = dict.fromkeys(hook["headers"], MASK)
        hook["url"] = _mask_url(model.url, hide_path=model.format in _URL_IS_SECRET)
    lines = ["# Effective job-watcher configuration; secrets are shown as ********."]
    _emit_table(lines, (), _masked(data))
    return "\n".join(lines).strip() + "\n"


def _mask_url(url: str, hide_path: bool = False) -> str:
    """Hide a URL's password and query (and its path, for URLs that are credentials themselves)."""
    parts = urlsplit(url)
    if parts.password is None and not parts.query and not (hide_path and parts.path.strip("/")):
        return url
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username}:{MASK}@{netloc.rpartition('@')[2]}"
    path = f"/{MASK}" if hide_path and parts.path.strip("/") else parts.path
    # Composed by hand: urlunsplit drops the empty host of sqlite:///path.
    return f"{parts.scheme}://{netloc}{path}" + (f"?{MASK}" if parts.query else "")


def _masked(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, SecretFile | Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _emit_table(lines: list[str], path: tuple[str, ...], table: Mapping[str, Any]) -> None:
    def is_table_array(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    for key, value in table.items():
        if not isinstance(value, dict) and not is_table_array(value):
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in table.items():
        sub = (*path, key)
        if isinstance(value, dict):
            # A header only where it has keys of its own (or is a section, kept visible even when empty).
            if len(sub) == 1 or any(
                not isinstance(v, dict) and not is_table_array(v) for v in value.values()
            ):
                lines.extend(["", f"[{'.'.join(map(_key, sub))}]"])
            _emit_table(lines, sub, value)
        elif is_table_array(value):
            for item in value:
                lines.extend(["", f"[[{'.'.join(map(_key, sub))}]]"])
                _emit_table(lines, sub, item)


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # JSON string escapes are valid TOML
