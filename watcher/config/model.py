"""The configuration schema (SPEC §3): one pydantic model per TOML section, and `Settings`, the whole.

Validation names the key at fault (`webhooks[0].url: …`); loading it from TOML and the environment is
`watcher.config.load`, printing it with secrets masked is `watcher.config.render`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from watcher.config.api import ApiConfig
from watcher.config.callbacks import CallbacksConfig
from watcher.config.endpoint import EndpointKeys
from watcher.config.fields import (
    HttpUrlStr,
    PositiveSeconds,
    SecretFile,
    SigningSecrets,
    WebhookSecret,
    event_type_name,
    problem,
    secret_from,
    slug_name,
    uuid_value,
)
from watcher.config.tls import ClientTlsKeys
from watcher.errors import ConfigError
from watcher.models import Credentials
from watcher.statuses import DEFAULT_TERMINAL, config_name, default_events, known_events

_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# The signature headers are computed per attempt; a static header must not be able to replace them.
_RESERVED_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature", "content-type"})
_MEDIA_TYPE_RE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;[ -~]*)?")
# Where format `pagerduty` posts when `url` is not set: PagerDuty's Events API v2 enqueue endpoint.
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_STORE_SCHEMES = ("sqlite:///", "memory://", "postgresql://", "postgres://")


class _Section(BaseModel):
    """Every section rejects unknown keys (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class WorkspaceConfig(_Section, ClientTlsKeys):
    """An extra upstream workspace; credentials it leaves out are the default workspace's. Its TLS keys,
    when it sets any of them, replace all three of `[upstream]`'s for its requests."""

    token: SecretStr | None = None
    token_file: SecretFile | None = None
    api_key: SecretStr | None = None
    api_key_file: SecretFile | None = None
    workspace_id: Annotated[str, AfterValidator(uuid_value)] | None = None
    base_url: HttpUrlStr | None = None
    # This workspace's own token bucket inside the upstream's (SPEC §5); None: the upstream's rate.
    rate_limit_per_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _read_files(self) -> Self:
        self.token = secret_from(self.token, self.token_file, "token")
        self.api_key = secret_from(self.api_key, self.api_key_file, "api_key")
        return self


class UpstreamConfig(_Section, ClientTlsKeys):
    """How to reach the Oration API (SPEC §2); its TLS keys hold for every workspace that sets none."""

    base_url: HttpUrlStr = "https://www.oration.ai/api/v2"
    token: SecretStr | None = None
    token_file: SecretFile | None = None
    api_key: SecretStr | None = None
    api_key_file: SecretFile | None = None
    workspace_slug: Annotated[str, AfterValidator(slug_name)]
    workspace_id: Annotated[str, AfterValidator(uuid_value)] | None = None
    timeout_s: PositiveSeconds = 10.0
    max_concurrency: int = Field(default=64, ge=1)
    rate_limit_per_s: float = Field(default=50.0, gt=0)
    # The statuses that end a watch, as the watcher names them (`expired` → `upstream_expired`, SPEC §2).
    terminal_statuses: list[Annotated[str, AfterValidator(config_name)]] = Field(
        default=list(DEFAULT_TERMINAL), min_length=1
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    workspaces: dict[Annotated[str, AfterValidator(slug_name)], WorkspaceConfig] = {}

    @model_validator(mode="after")
    def _resolve(self) -> Self:
        self.token = secret_from(self.token, self.token_file, "token")
        self.api_key = secret_from(self.api_key, self.api_key_file, "api_key")
        for key in ("token", "api_key"):
            if getattr(self, key) is None:
                raise problem((key,), f"required (or set {key}_file)")
        if self.workspace_slug in self.workspaces:
            raise problem(("workspaces", self.workspace_slug), "is already the default workspace_slug")
        self.terminal_statuses = list(dict.fromkeys(self.terminal_statuses))
        return self

    def credentials(self) -> dict[str, Credentials]:
        """Plain credentials for the default workspace and each extra one, keyed by slug."""
        if self.token is None or self.api_key is None:  # only possible for an unvalidated model_construct
            raise ConfigError(["upstream.token: required"])
        token, api_key = self.token.get_secret_value(), self.api_key.get_secret_value()
        creds = {
            self.workspace_slug: Credentials(
                self.workspace_slug, self.base_url, token, api_key, self.workspace_id
            )
        }
        for slug, ws in self.workspaces.items():
            creds[slug] = Credentials(
                slug,
                ws.base_url or self.base_url,
                ws.token.get_secret_value() if ws.token else token,
                ws.api_key.get_secret_value() if ws.api_key else api_key,
                ws.workspace_id,
            )
        return creds

    def workspace_rates(self) -> dict[str, float | None]:
        """Each workspace's own rate limit, keyed by slug (None: the upstream's `rate_limit_per_s`)."""
        return {self.workspace_slug: None} | {
            slug: ws.rate_limit_per_s for slug, ws in self.workspaces.items()
        }


class PollingConfig(_Section):
    """How often a job is polled and when the watcher gives up on it (SPEC §5)."""

    initial_interval_s: PositiveSeconds = 5.0
    multiplier: float = Field(default=1.5, ge=1.0)
    max_interval_s: PositiveSeconds = 60.0
    jitter: float = Field(default=0.2, ge=0.0, lt=1.0)
    max_watch_s: PositiveSeconds = 86400.0
    not_found_limit: int = Field(default=5, ge=1)
    error_backoff_max_s: PositiveSeconds = 300.0
    retention_s: PositiveSeconds = 604800.0
    # Adaptive polling (SPEC §12): learn each job type's durations, poll where its jobs finish.
    strategy: Literal["backoff", "adaptive"] = "backoff"
    adaptive_lag_target_s: PositiveSeconds = 60.0
    adaptive_min_samples: int = Field(default=20, ge=1)
    adaptive_min_interval_s: PositiveSeconds = 1.0
    adaptive_max_interval_s: PositiveSeconds = 3600.0
    adaptive_max_types: int = Field(default=10_000, ge=1)
    adaptive_window: int = Field(default=1000, ge=1)
    slow_quantile: float = Field(default=0.99, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max_interval_s < self.initial_interval_s:
            raise problem(("max_interval_s",), "must be >= initial_interval_s")
        if self.adaptive_max_interval_s < self.adaptive_min_interval_s:
            raise problem(("adaptive_max_interval_s",), "must be >= adaptive_min_interval_s")
        return self


class StoreConfig(_Section):
    """Where state lives; None means SQLite under the state directory."""

    url: str | None = Field(default=None, repr=False)  # a PostgreSQL URL may carry a password

    @model_validator(mode="after")
    def _scheme(self) -> Self:
        if self.url is not None and not self.url.startswith(_STORE_SCHEMES):
            raise problem(("url",), "must start with sqlite:///, memory:// or postgresql://")
        return self


class WatchlistConfig(_Section):
    """The declarative watch-list file (SPEC §5)."""

    path: Path | None = None
    reload_interval_s: PositiveSeconds = 5.0
    # How long a file must stay unchanged before the ids it lost are unwatched; None: twice the interval.
    settle_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _default_settle(self) -> Self:
        if self.settle_s is None:
            self.settle_s = 2 * self.reload_interval_s
        return self


# The formats that may group events into one message (`group_window_s`, SPEC §15), and the longest window.
GROUPED_FORMATS = ("slack", "msteams", "discord", "pagerduty")
GROUP_WINDOW_MAX_S = 3600.0


class WebhookConfig(_Section, EndpointKeys, SigningSecrets, ClientTlsKeys):
    """One webhook receiver; its URL comes only from the config, never from API clients."""

    name: Annotated[str, AfterValidator(slug_name)]
    url: HttpUrlStr = Field(repr=False)  # Slack-style URLs are themselves credentials
    secret: WebhookSecret | None = None
    secrets: list[WebhookSecret] | None = None
    secret_file: SecretFile | None = None
    # None: the default filter, which depends on `upstream.terminal_statuses` (filled in by `Settings`).
    events: list[Annotated[str, AfterValidator(event_type_name)]] | None = Field(default=None, min_length=1)
    format: Literal["standard", "slack", "pagerduty", "msteams", "discord", "alertmanager", "template"] = (
        "standard"
    )
    timeout_s: PositiveSeconds = 10.0
    max_attempts: int = Field(default=10, ge=1)
    retry_initial_s: PositiveSeconds = 1.0
    retry_max_s: PositiveSeconds = 600.0
    headers: dict[str, str] = Field(default={}, repr=False)  # values may be receivers' API keys
    # Deliveries to this webhook in flight at once, within `daemon.delivery_concurrency` (issue 14).
    concurrency: int = Field(default=4, ge=1)
    # SPEC §15: the formats' own keys. `routing_key` is PagerDuty's integration key, a secret.
    routing_key: SecretStr | None = None
    routing_key_file: SecretFile | None = None
    template: str | None = Field(default=None, repr=False)
    template_file: Path | None = None
    content_type: str = "application/json"
    alert_duration_s: PositiveSeconds = 3600.0
    # One message per window for the chat and pager formats (SPEC §15); 0: one message per event.
    group_window_s: float = Field(default=0.0, ge=0, le=GROUP_WINDOW_MAX_S, allow_inf_nan=False)
    # Routing filters beside `events` (SPEC §15): the watch's workspace is one of these; every label matches.
    workspaces: list[str] | None = Field(default=None, min_length=1)
    labels: dict[str, str] = {}

    @model_validator(mode="before")
    @classmethod
    def _default_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("format") == "pagerduty" and "url" not in data:
            return {**data, "url": PAGERDUTY_EVENTS_URL}
        return data

    @model_validator(mode="after")
    def _check_format(self) -> Self:
        self.routing_key = secret_from(self.routing_key, self.routing_key_file, "routing_key")
        if self.format == "pagerduty" and self.routing_key is None:
            raise problem(("routing_key",), "required for format 'pagerduty' (or set routing_key_file)")
        if self.template is not None and self.template_file is not None:
            raise problem(("template_file",), "cannot be combined with template; set only one")
        if self.template_file is not None:
            try:
                self.template = self.template_file.expanduser().read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                reason = getattr(e, "strerror", None) or "not UTF-8 text"
                raise problem(("template_file",), f"cannot read {self.template_file}: {reason}") from None
        if self.format == "template" and not (self.template or "").strip():
            raise problem(("template",), "required for format 'template' (or set template_file)")
        if self.format != "template" and self.template is not None:
            raise problem(("template",), "only for format 'template'")
        if self.group_window_s > 0 and self.format not in GROUPED_FORMATS:
            formats = ", ".join(GROUPED_FORMATS)
            raise problem(
                ("group_window_s",),
                f"only for formats {formats}; format {self.format!r} sends one event per request",
            )
        if self.group_window_s >= self.max_delivery_age_s:
            raise problem(("group_window_s",), "must be less than max_delivery_age_s")
        if not _MEDIA_TYPE_RE.fullmatch(self.content_type):
            raise problem(("content_type",), "is not a media type (type/subtype)")
        return self

    @model_validator(mode="after")
    def _check(self) -> Self:
        given = self.given_secrets()
        if not given and self.format == "standard":
            # Slack incoming webhooks cannot verify signatures, so only `standard` insists on a secret.
            raise problem(("secret",), "required for format 'standard' (or set secrets or secret_file)")
        if self.retry_max_s < self.retry_initial_s:
            raise problem(("retry_max_s",), "must be >= retry_initial_s")
        for header in self.headers:
            if not _HEADER_NAME_RE.fullmatch(header) or header.lower() in _RESERVED_HEADERS:
                raise problem(("headers", header), "is not a header name this webhook may set")
        if self.events is not None:
            self.events = list(dict.fromkeys(self.events))
        return self


class LogConfig(_Section):
    """Log level and renderer."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _lower(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("level"), str):
            return {**data, "level": data["level"].lower()}
        return data

    def resolved_format(self, stdout_isatty: bool) -> Literal["json", "console"]:
        """The renderer to use: the configured one, else console on a terminal and JSON elsewhere."""
        if self.format is not None:
            return self.format
        return "console" if stdout_isatty else "json"


class DaemonConfig(_Section):
    """Process-level settings."""

    state_dir: Path | None = None
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    lease_s: PositiveSeconds = 60.0
    delivery_concurrency: int = Field(default=16, ge=1)
    purge_interval_s: PositiveSeconds = 60.0


def default_state_dir(env: Mapping[str, str]) -> Path:
    """systemd's $STATE_DIRECTORY (first entry), else $XDG_DATA_HOME/job-watcher, else ~/.local/share."""
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore a relative value
        return Path(xdg) / "job-watcher"
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".local" / "share" / "job-watcher"


class Settings(BaseSettings):
    """The whole configuration; env (`WATCHER_SECTION__KEY`) wins over the TOML file."""

    model_config = SettingsConfigDict(
        env_prefix="WATCHER_", env_nested_delimiter="__", env_ignore_empty=True, extra="forbid"
    )

    upstream: UpstreamConfig
    polling: PollingConfig = PollingConfig()
    api: ApiConfig = ApiConfig()
    store: StoreConfig = StoreConfig()
    watchlist: WatchlistConfig = WatchlistConfig()
    webhooks: list[WebhookConfig] = []
    callbacks: CallbacksConfig = CallbacksConfig()
    log: LogConfig = LogConfig()
    daemon: DaemonConfig = DaemonConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        seen: dict[str, int] = {}
        for i, hook in enumerate(self.webhooks):
            if hook.name == "callback":
                raise problem(("webhooks", i, "name"), "'callback' is reserved for per-watch callbacks")
            if hook.name in seen:
                raise problem(("webhooks", i, "name"), f"duplicates webhooks[{seen[hook.name]}].name")
            seen[hook.name] = i
            if hook.events is None:
                hook.events = default_events(self.upstream.terminal_statuses)
        known = {self.upstream.workspace_slug, *self.upstream.workspaces}
        for i, client in enumerate(self.api.clients):
            for j, ws in enumerate(client.workspaces or ()):
                if ws not in known:
                    raise problem(("api", "clients", i, "workspaces", j), f"unknown workspace {ws!r}")
        for i, hook in enumerate(self.webhooks):  # a typo would silently route nothing there
            for j, ws in enumerate(hook.workspaces or ()):
                if ws not in known:
                    raise problem(("webhooks", i, "workspaces", j), f"unknown workspace {ws!r}")
        # A lease shorter than a request would let a second worker take over an in-flight poll or delivery.
        timeouts = [self.upstream.timeout_s, *(h.timeout_s for h in self.webhooks)]
        if self.callbacks.enabled:
            timeouts.append(self.callbacks.timeout_s)
        longest = max(timeouts)
        if self.daemon.lease_s <= longest:
            raise problem(
                ("daemon", "lease_s"), "must be longer than every upstream, webhook and callbacks timeout_s"
            )
        return self

    def unknown_event_types(self) -> list[str]:
        """`webhooks[i].events: …` lines for event types the watcher does not know it can emit (a typo, or a
        status the upstream may grow into); a warning at start-up, not an error (SPEC §2)."""
        known = known_events(self.upstream.terminal_statuses)
        return [
            f"webhooks[{i}].events: {etype} is not an event this watcher knows it emits "
            f"(documented statuses, terminal_statuses, job.expired, job.missing, job.unknown, job.slow)"
            for i, hook in enumerate(self.webhooks)
            for etype in hook.events or ()
            if etype not in known
        ]

    def resolved_state_dir(self) -> Path:
        """`daemon.state_dir`, or the default for this environment when unset."""
        return self.daemon.state_dir or default_state_dir(os.environ)

    def resolved_store_url(self) -> str:
        """`store.url`, or SQLite in the state directory when unset."""
        return self.store.url or f"sqlite:///{self.resolved_state_dir() / 'watcher.db'}"
