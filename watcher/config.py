"""Configuration (SPEC §3): one TOML file plus `WATCHER_*` environment variables, validated by pydantic.

`load_config` is the only entry point the daemon uses; it turns every problem into one `ConfigError` line
that names the key (`webhooks[0].url: …`) and never echoes an input value, so secrets cannot leak through
errors. `render_config` prints the effective configuration with every secret masked.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from watcher.errors import ConfigError
from watcher.models import Credentials
from watcher.statuses import DEFAULT_TERMINAL, config_name, default_events, is_event_name, known_events

MASK = "********"
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# The signature headers are computed per attempt; a static header must not be able to replace them.
_RESERVED_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature", "content-type"})
_STORE_SCHEMES = ("sqlite:///", "memory://", "postgresql://", "postgres://")


class SecretFile:
    """A secret read from a file (e.g. a mounted Kubernetes Secret) at load time; it shows only its path."""

    __slots__ = ("_value", "path")

    def __init__(self, path: Path, value: str) -> None:
        self.path = path
        self._value = value

    def get_secret_value(self) -> str:
        """The file's content without its trailing newline."""
        return self._value

    def __repr__(self) -> str:
        return f"SecretFile({str(self.path)!r})"

    @classmethod
    def read(cls, value: Any) -> SecretFile:
        """Read the file named by `value`; the error names the path, never the content."""
        if isinstance(value, SecretFile):
            return value
        if not isinstance(value, str | Path) or not str(value):
            raise ValueError("must be a file path")
        path = Path(value).expanduser()
        try:
            content = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise ValueError(f"cannot read {path}: not UTF-8 text") from None
        if not content:
            raise ValueError(f"{path} is empty")
        return cls(path, content)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.read, serialization=core_schema.plain_serializer_function_ser_schema(lambda v: str(v.path))
        )


def _problem(loc: tuple[str | int, ...], message: str) -> PydanticCustomError:
    """An error raised by a model validator that still names the offending key inside that model."""
    return PydanticCustomError("config_field", message, {"loc": loc})


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value.rstrip("/")


def _uuid(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", value):
        raise ValueError("must be a UUID")
    return value.lower()


def _slug(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError("must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return value


def _whsec(value: SecretStr) -> SecretStr:
    _check_whsec(value.get_secret_value())
    return value


def _check_whsec(plain: str) -> None:
    # The message never contains the value: this is a signing key.
    prefix, _, encoded = plain.partition("_")
    try:
        ok = prefix == "whsec" and len(base64.b64decode(encoded, validate=True)) > 0
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise ValueError("must be whsec_ followed by base64 (value not shown)")


def _event_type(value: str) -> str:
    # Any `job.<name>` (SPEC §2: the upstream may grow statuses); unknown names only warn, at start-up.
    if not (value.startswith("job.") and is_event_name(value[4:])):
        raise ValueError(
            f"{value!r} is not an event type: expected job.<name>, <name> being [a-z][a-z0-9_], "
            "at most 32 characters (e.g. job.failed)"
        )
    return value


HttpUrlStr = Annotated[str, AfterValidator(_http_url)]
WebhookSecret = Annotated[SecretStr, AfterValidator(_whsec)]
PositiveSeconds = Annotated[float, Field(gt=0)]


def _secret_from(value: SecretStr | None, file: SecretFile | None, key: str) -> SecretStr | None:
    """The effective secret of a `key` / `key_file` pair; giving both is an error."""
    if value is not None and file is not None:
        raise _problem((f"{key}_file",), f"cannot be combined with {key}; set only one")
    if file is not None:
        return SecretStr(file.get_secret_value())
    if value is not None and not value.get_secret_value():
        raise _problem((key,), "must not be empty")
    return value


class _Section(BaseModel):
    """Every section rejects unknown keys (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class WorkspaceConfig(_Section):
    """An extra upstream workspace; credentials it leaves out are the default workspace's."""

    token: SecretStr | None = None
    token_file: SecretFile | None = None
    api_key: SecretStr | None = None
    api_key_file: SecretFile | None = None
    workspace_id: Annotated[str, AfterValidator(_uuid)] | None = None
    base_url: HttpUrlStr | None = None

    @model_validator(mode="after")
    def _read_files(self) -> Self:
        self.token = _secret_from(self.token, self.token_file, "token")
        self.api_key = _secret_from(self.api_key, self.api_key_file, "api_key")
        return self


class UpstreamConfig(_Section):
    """How to reach the Oration API (SPEC §2)."""

    base_url: HttpUrlStr = "https://www.oration.ai/api/v2"
    token: SecretStr | None = None
    token_file: SecretFile | None = None
    api_key: SecretStr | None = None
    api_key_file: SecretFile | None = None
    workspace_slug: Annotated[str, AfterValidator(_slug)]
    workspace_id: Annotated[str, AfterValidator(_uuid)] | None = None
    timeout_s: PositiveSeconds = 10.0
    max_concurrency: int = Field(default=64, ge=1)
    rate_limit_per_s: float = Field(default=50.0, gt=0)
    # The statuses that end a watch, as the watcher names them (`expired` → `upstream_expired`, SPEC §2).
    terminal_statuses: list[Annotated[str, AfterValidator(config_name)]] = Field(
        default=list(DEFAULT_TERMINAL), min_length=1
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    workspaces: dict[Annotated[str, AfterValidator(_slug)], WorkspaceConfig] = {}

    @model_validator(mode="after")
    def _resolve(self) -> Self:
        self.token = _secret_from(self.token, self.token_file, "token")
        self.api_key = _secret_from(self.api_key, self.api_key_file, "api_key")
        for key in ("token", "api_key"):
            if getattr(self, key) is None:
                raise _problem((key,), f"required (or set {key}_file)")
        if self.workspace_slug in self.workspaces:
            raise _problem(("workspaces", self.workspace_slug), "is already the default workspace_slug")
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

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max_interval_s < self.initial_interval_s:
            raise _problem(("max_interval_s",), "must be >= initial_interval_s")
        return self


class ApiConfig(_Section):
    """The HTTP API listener (SPEC §7)."""

    listen: str = "127.0.0.1:8080"
    tokens: list[SecretStr] = []
    max_body_bytes: int = Field(default=1_048_576, ge=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        _split_listen(self.listen)  # raises with the key named
        for i, token in enumerate(self.tokens):
            if not token.get_secret_value():
                raise _problem(("tokens", i), "must not be empty")
        return self

    @property
    def host(self) -> str:
        """The host part of `listen`, without IPv6 brackets."""
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The port part of `listen` (0 asks the OS for a free port)."""
        return _split_listen(self.listen)[1]

    def is_loopback(self) -> bool:
        """True if the API only listens on this machine (then it may run without tokens)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name other than localhost may resolve to anything


def _split_listen(listen: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:\[\]]+):(\d{1,5})", listen)
    if match is None or int(match[2] or match[4]) > 65535:
        raise _problem(("listen",), "must be host:port, e.g. 127.0.0.1:8080 or [::1]:8080")
    if match[1] is not None:
        try:
            ipaddress.IPv6Address(match[1])
        except ValueError:
            raise _problem(("listen",), "has an invalid IPv6 address") from None
        return match[1], int(match[2])
    return match[3], int(match[4])


class StoreConfig(_Section):
    """Where state lives; None means SQLite under the state directory."""

    url: str | None = Field(default=None, repr=False)  # a PostgreSQL URL may carry a password

    @model_validator(mode="after")
    def _scheme(self) -> Self:
        if self.url is not None and not self.url.startswith(_STORE_SCHEMES):
            raise _problem(("url",), "must start with sqlite:///, memory:// or postgresql://")
        return self


class WatchlistConfig(_Section):
    """The declarative watch-list file (SPEC §5)."""

    path: Path | None = None
    reload_interval_s: PositiveSeconds = 5.0


class WebhookConfig(_Section):
    """One webhook receiver; its URL comes only from the config, never from API clients."""

    name: Annotated[str, AfterValidator(_slug)]
    url: HttpUrlStr = Field(repr=False)  # Slack-style URLs are themselves credentials
    secret: WebhookSecret | None = None
    secrets: list[WebhookSecret] | None = None
    secret_file: SecretFile | None = None
    # None: the default filter, which depends on `upstream.terminal_statuses` (filled in by `Settings`).
    events: list[Annotated[str, AfterValidator(_event_type)]] | None = Field(default=None, min_length=1)
    format: Literal["standard", "slack"] = "standard"
    timeout_s: PositiveSeconds = 10.0
    max_attempts: int = Field(default=10, ge=1)
    retry_initial_s: PositiveSeconds = 1.0
    retry_max_s: PositiveSeconds = 600.0
    headers: dict[str, str] = Field(default={}, repr=False)  # values may be receivers' API keys

    @model_validator(mode="after")
    def _check(self) -> Self:
        given = [k for k in ("secret", "secrets", "secret_file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise _problem((given[1],), f"cannot be combined with {given[0]}; set only one")
        if self.secrets is not None and not self.secrets:
            raise _problem(("secrets",), "must list at least one secret")
        if self.secret_file is not None:
            try:
                _check_whsec(self.secret_file.get_secret_value())
            except ValueError as e:
                raise _problem(("secret_file",), f"content {e}") from None
        if not given and self.format == "standard":
            # Slack incoming webhooks cannot verify signatures, so only `standard` insists on a secret.
            raise _problem(("secret",), "required for format 'standard' (or set secrets or secret_file)")
        if self.retry_max_s < self.retry_initial_s:
            raise _problem(("retry_max_s",), "must be >= retry_initial_s")
        for header in self.headers:
            if not _HEADER_NAME_RE.fullmatch(header) or header.lower() in _RESERVED_HEADERS:
                raise _problem(("headers", header), "is not a header name this webhook may set")
        if self.events is not None:
            self.events = list(dict.fromkeys(self.events))
        return self

    def all_secrets(self) -> list[str]:
        """Plain signing secrets, newest first; every delivery is signed with each (rotation)."""
        if self.secret_file is not None:
            return [self.secret_file.get_secret_value()]
        if self.secrets is not None:
            return [s.get_secret_value() for s in self.secrets]
        return [self.secret.get_secret_value()] if self.secret is not None else []


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
    log: LogConfig = LogConfig()
    daemon: DaemonConfig = DaemonConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        seen: dict[str, int] = {}
        for i, hook in enumerate(self.webhooks):
            if hook.name in seen:
                raise _problem(("webhooks", i, "name"), f"duplicates webhooks[{seen[hook.name]}].name")
            seen[hook.name] = i
            if hook.events is None:
                hook.events = default_events(self.upstream.terminal_statuses)
        # A lease shorter than a request would let a second worker take over an in-flight poll or delivery.
        longest = max([self.upstream.timeout_s, *(h.timeout_s for h in self.webhooks)])
        if self.daemon.lease_s <= longest:
            raise _problem(("daemon", "lease_s"), "must be longer than every upstream and webhook timeout_s")
        return self

    def unknown_event_types(self) -> list[str]:
        """`webhooks[i].events: …` lines for event types the watcher does not know it can emit (a typo, or a
        status the upstream may grow into); a warning at start-up, not an error (SPEC §2)."""
        known = known_events(self.upstream.terminal_statuses)
        return [
            f"webhooks[{i}].events: {etype} is not an event this watcher knows it emits "
            f"(documented statuses, terminal_statuses, job.expired, job.missing, job.unknown)"
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
        raise ConfigError([_format_error(err) for err in e.errors()]) from None
    except SettingsError as e:  # only raised for environment values that are not valid JSON
        field = re.search(r'field "(\w+)"', str(e))
        raise ConfigError(
            [f"{field[1] if field else 'environment'}: WATCHER_ value is not valid JSON"]
        ) from None
    if settings.daemon.state_dir is None:
        settings.daemon.state_dir = default_state_dir(env)
    return settings


_MESSAGES = {"extra_forbidden": "unknown key", "missing": "required"}


def _format_error(err: Mapping[str, Any]) -> str:
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


def render_config(settings: Settings) -> str:
    """The effective configuration as TOML, with every secret shown as ********."""
    data = settings.model_dump(exclude_none=True)
    data["daemon"]["state_dir"] = str(settings.resolved_state_dir())
    data["store"]["url"] = _mask_url(settings.resolved_store_url())
    for hook, model in zip(data["webhooks"], settings.webhooks, strict=True):
        hook["headers"] = dict.fromkeys(hook["headers"], MASK)
        hook["url"] = _mask_url(model.url, hide_path=model.format == "slack")
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
