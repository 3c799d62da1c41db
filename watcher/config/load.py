"""Loading the configuration: the TOML file, then `WATCHER_*` environment variables over it.

`load_config` is the only entry point the daemon uses; it turns every problem into one `ConfigError` line
that names the key (`webhooks[0].url: …`) and never echoes an input value, so secrets cannot leak through
errors. `*_file` secrets are read while the model validates (`watcher.config.fields.SecretFile`).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, InitSettingsSource, SettingsError

from watcher.config.model import Settings, default_state_dir
from watcher.errors import ConfigError


class _MappingEnvSource(EnvSettingsSource):
    """The env source over an injected mapping instead of `os.environ`, so tests and callers control it."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Same normalisation as pydantic-settings (case-insensitive names, empty means unset).
        return {k.lower(): v for k, v in self._env.items() if v != ""}


def systemd_config_path(env: Mapping[str, str]) -> Path | None:
    """`$CONFIGURATION_DIRECTORY/watcher.toml` (systemd's `ConfigurationDirectory=`), when that is set."""
    if env.get("CONFIGURATION_DIRECTORY"):
        return Path(env["CONFIGURATION_DIRECTORY"].split(":")[0]) / "watcher.toml"
    return None


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Load and validate the configuration; every problem becomes one line of a `ConfigError`."""
    env = os.environ if env is None else env
    path = path or env.get("WATCHER_CONFIG") or systemd_config_path(env)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from None
        except UnicodeDecodeError:
            raise ConfigError([f"{path}: not UTF-8 text"]) from None
        except tomllib.TOMLDecodeError as e:  # the message carries the line and column
            raise ConfigError([f"{path}: invalid TOML: {e}"]) from None
    sources = (_MappingEnvSource(Settings, env), InitSettingsSource(Settings, data))
    try:
        settings = Settings(_build_sources=(sources, {}))
    except ValidationError as e:
        raise ConfigError([format_error(err) for err in e.errors()]) from None
    except SettingsError as e:  # only raised for environment values that are not valid JSON
        field = re.search(r'field "(\w+)"', str(e))
        raise ConfigError(
            [f"{field[1] if field else 'environment'}: WATCHER_ value is not valid JSON"]
        ) from None
    if settings.daemon.state_dir is None:
        settings.daemon.state_dir = default_state_dir(env)
    return settings


_MESSAGES = {"extra_forbidden": "unknown key", "missing": "required"}


def format_error(err: Mapping[str, Any]) -> str:
    """`webhooks[0].url: <message>`; the input value is never included, it may be a secret."""
    ctx = err.get("ctx") or {}
    loc = (*err["loc"], *ctx.get("loc", ()))
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    if err["type"] == "value_error":
        message = str(ctx.get("error", err["msg"]))
    else:
        message = _MESSAGES.get(err["type"], err["msg"])
    return f"{key or 'config'}: {message}"


# -- rendering ------------------------------------------------------------------------------------------
