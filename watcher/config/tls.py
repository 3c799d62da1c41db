"""TLS keys of the configuration: what outgoing requests trust and present (`ca_file`, `client_cert_file`,
`client_key_file` on `[upstream]`, each `[[webhooks]]` and `[callbacks]`), and the API's own certificate
(`api.tls_cert_file`, `api.tls_key_file`).

Every file is read and parsed while the configuration loads, so a missing or broken one is an error that
names its key (exit 2) rather than a failure at the first request. The contexts the daemon uses are built
again from the same files when it starts. A `ca_file` replaces the system's trust store for that endpoint
(as `curl --cacert` does): give a bundle with the public roots too if the endpoint needs both. Private keys
must be unencrypted PEM (key passwords are not supported; the file's permissions protect it). Error messages
name the path and what is wrong with it, never the file's content.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Self

from pydantic import BaseModel, model_validator

from watcher.config.fields import problem


class TlsFileError(ValueError):
    """A TLS file that cannot be used; `key` is the configuration key at fault (e.g. `client_key_file`)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class _EncryptedKey(Exception):
    """Raised by the password callback: OpenSSL asks for a password only for an encrypted key."""


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal; a daemon must fail with a reason instead.
    raise _EncryptedKey


def _readable(key: str, path: Path) -> Path:
    path = path.expanduser()
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as e:
        raise TlsFileError(key, f"cannot read {path}: {e.strerror or e}") from None
    return path


def _load_chain(ctx: ssl.SSLContext, cert_key: str, cert: Path, key_key: str, key: Path) -> None:
    """Load a certificate and its private key into `ctx`; errors name the file at fault."""
    cert, key = _readable(cert_key, cert), _readable(key_key, key)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except ssl.SSLError:
        raise TlsFileError(cert_key, f"{cert} holds no PEM certificate") from None
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        raise TlsFileError(key_key, f"{key} is encrypted; key passwords are not supported") from None
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise TlsFileError(key_key, f"{key} is not the key of {cert_key}") from None
        raise TlsFileError(key_key, f"{key} holds no PEM private key") from None


def client_context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    """A client context: the system's trust store, or only `ca_file`'s certificates; and the client
    certificate (mTLS) when `cert_file` and `key_file` are given. Raises `TlsFileError`."""
    cafile = None if ca_file is None else _readable("ca_file", ca_file)
    try:
        ctx = ssl.create_default_context(cafile=cafile)
    except ssl.SSLError:
        raise TlsFileError("ca_file", f"{cafile} holds no PEM certificate") from None
    if cert_file is not None and key_file is not None:
        _load_chain(ctx, "client_cert_file", cert_file, "client_key_file", key_file)
    return ctx


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context with this certificate (chain) and key, TLS 1.2 or later. Raises `TlsFileError`."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, "tls_cert_file", cert_file, "tls_key_file", key_file)
    return ctx


class ClientTlsKeys(BaseModel):
    """`ca_file`, `client_cert_file` and `client_key_file` of one endpoint (or of every callback)."""

    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None

    @model_validator(mode="after")
    def _check_tls(self) -> Self:
        if (self.client_cert_file is None) != (self.client_key_file is None):
            given, missing = (
                ("client_cert_file", "client_key_file")
                if self.client_key_file is None
                else ("client_key_file", "client_cert_file")
            )
            raise problem((missing,), f"required with {given} (give both or neither)")
        try:
            client_context(self.ca_file, self.client_cert_file, self.client_key_file)
        except TlsFileError as e:
            raise problem((e.key,), str(e)) from None
        return self

    def has_tls(self) -> bool:
        """True if any of the keys is set (else the default context, the system's trust, is used)."""
        return any(p is not None for p in (self.ca_file, self.client_cert_file, self.client_key_file))

    def tls_files(self) -> tuple[Path | None, Path | None, Path | None]:
        """(ca_file, client_cert_file, client_key_file): what makes two endpoints' contexts the same."""
        return self.ca_file, self.client_cert_file, self.client_key_file

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context outgoing requests use, or None for the default (system trust, no client cert)."""
        return client_context(*self.tls_files()) if self.has_tls() else None
