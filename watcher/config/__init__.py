"""Configuration (SPEC §3): the schema (`model`), loading it from TOML and the environment (`load`), and
printing it with secrets masked (`render`)."""

from watcher.config.load import load_config
from watcher.config.model import Settings, WebhookConfig
from watcher.config.render import render_config

__all__ = ["Settings", "WebhookConfig", "load_config", "render_config"]
