"""The `[api]` section (SPEC §7, §14, §16): the listener, its bounds for slow clients, and who may call it,
`api.tokens` (full access) and `[[api.clients]]` (named, with scopes and workspaces)."""

from __future__ import annotations

import ipaddress
import re
import ssl
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator

from watcher.config.fields import PositiveSeconds, SecretFile, problem, secret_from, slug_name
from watcher.config.tls import TlsFileError, server_context

Scope = Literal["watches:read", "watches:write", "deliveries:read", "deliveries:write"]
SCOPES: tuple[Scope, ...] = ("watches:read", "watches:write", "deliveries:read", "deliveries:write")
# Client names that mean something else in `watcher_api_requests_total{client}` and `api.audit`.
RESERVED_CLIENT_NAMES = frozenset({"token", "anonymous"})


class _Section(BaseModel):
    """Unknown keys are errors (as in every section of `watcher.config.model`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ApiClientConfig(_Section):
    """One API client (SPEC §14): its token, what it may do and which workspaces it sees."""

    name: Annotated[str, AfterValidator(slug_name)]
    token: SecretStr | None = None
    token_file: SecretFile | None = None
    scopes: list[Scope] = Field(default=list(SCOPES))
    # None: every workspace; else only watches (and their deliveries) of these.
    workspaces: list[Annotated[str, AfterValidator(slug_name)]] | None = Field(default=None, min_length=1)
    # Requests per second (a token bucket with a burst of one second's worth); None: no limit.
    rate_limit_per_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.name in RESERVED_CLIENT_NAMES:
            raise problem(("name",), f"{self.name!r} is reserved; choose another name")
        self.token = secret_from(self.token, self.token_file, "token")
        if self.token is None:
            raise problem(("token",), "required (or set token_file)")
        self.scopes = list(dict.fromkeys(self.scopes))
        if self.workspaces is not None:
            self.workspaces = list(dict.fromkeys(self.workspaces))
        return self

    def secret(self) -> str:
        """The plain token."""
        return self.token.get_secret_value() if self.token is not None else ""


class ApiConfig(_Section):
    """The HTTP API listener (SPEC §7)."""

    listen: str = "127.0.0.1:8080"
    tokens: list[SecretStr] = []
    clients: list[ApiClientConfig] = []
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    # Slow clients (SPEC §16): the headers must be complete, the body arrived, within these; an idle
    # keep-alive connection is closed after header_timeout_s too.
    header_timeout_s: PositiveSeconds = 10.0
    body_timeout_s: PositiveSeconds = 30.0
    max_connections: int = Field(default=1000, ge=1)
    # Unfinished and finished watches the store may hold; registering past it is 507 (SPEC §14).
    max_watches: int = Field(default=2_000_000, ge=1)
    # HTTPS: the server's certificate (chain, PEM) and its unencrypted key; both or neither.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        _split_listen(self.listen)  # raises with the key named
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            missing = "tls_key_file" if self.tls_key_file is None else "tls_cert_file"
            given = "tls_cert_file" if missing == "tls_key_file" else "tls_key_file"
            raise problem((missing,), f"required with {given} (give both or neither)")
        try:
            self.ssl_context()
        except TlsFileError as e:
            raise problem((e.key,), str(e)) from None
        seen: dict[str, str] = {}
        for i, token in enumerate(self.tokens):
            if not token.get_secret_value():
                raise problem(("tokens", i), "must not be empty")
            seen.setdefault(token.get_secret_value(), f"tokens[{i}]")
        names: dict[str, int] = {}
        for i, client in enumerate(self.clients):
            if client.name in names:
                raise problem(("clients", i, "name"), f"duplicates clients[{names[client.name]}].name")
            names[client.name] = i
            other = seen.setdefault(client.secret(), f"clients[{i}]")
            if other != f"clients[{i}]":
                raise problem(("clients", i, "token"), f"is the same token as {other}; give each its own")
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server context of an HTTPS API, or None for plain HTTP. Raises `TlsFileError`."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return server_context(self.tls_cert_file, self.tls_key_file)

    @property
    def scheme(self) -> str:
        """`https` when the API serves TLS, else `http`."""
        return "https" if self.tls_cert_file is not None else "http"

    def has_auth(self) -> bool:
        """True if any token is configured: then every `/v1` request needs one."""
        return bool(self.tokens or self.clients)

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
        raise problem(("listen",), "must be host:port, e.g. 127.0.0.1:8080 or [::1]:8080")
    if match[1] is not None:
        try:
            ipaddress.IPv6Address(match[1])
        except ValueError:
            raise problem(("listen",), "has an invalid IPv6 address") from None
        return match[1], int(match[2])
    return match[3], int(match[4])
