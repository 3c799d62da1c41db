"""The building blocks of the configuration schema: secrets read from files and the validators of single
values. Every error names what is wrong and never echoes the value: it may be a secret.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, GetCoreSchemaHandler, SecretStr
from pydantic_core import PydanticCustomError, core_schema

from watcher.ids import is_uuid
from watcher.statuses import is_event_name

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


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


def problem(loc: tuple[str | int, ...], message: str) -> PydanticCustomError:
    """An error raised by a model validator that still names the offending key inside that model."""
    return PydanticCustomError("config_field", message, {"loc": loc})


def http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value.rstrip("/")


def uuid_value(value: str) -> str:
    if not is_uuid(value):
        raise ValueError("must be a UUID")
    return value.lower()


def slug_name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ValueError("must be 1-64 characters of A-Z a-z 0-9 _ . -")
    return value


def whsec(value: SecretStr) -> SecretStr:
    check_whsec(value.get_secret_value())
    return value


def check_whsec(plain: str) -> None:
    # The message never contains the value: this is a signing key.
    prefix, _, encoded = plain.partition("_")
    try:
        ok = prefix == "whsec" and len(base64.b64decode(encoded, validate=True)) > 0
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise ValueError("must be whsec_ followed by base64 (value not shown)")


def event_type_name(value: str) -> str:
    # Any `job.<name>` (SPEC §2: the upstream may grow statuses); unknown names only warn, at start-up.
    if not (value.startswith("job.") and is_event_name(value[4:])):
        raise ValueError(
            f"{value!r} is not an event type: expected job.<name>, <name> being [a-z][a-z0-9_], "
            "at most 32 characters (e.g. job.failed)"
        )
    return value


HttpUrlStr = Annotated[str, AfterValidator(http_url)]
WebhookSecret = Annotated[SecretStr, AfterValidator(whsec)]
PositiveSeconds = Annotated[float, Field(gt=0)]


def secret_from(value: SecretStr | None, file: SecretFile | None, key: str) -> SecretStr | None:
    """The effective secret of a `key` / `key_file` pair; giving both is an error."""
    if value is not None and file is not None:
        raise problem((f"{key}_file",), f"cannot be combined with {key}; set only one")
    if file is not None:
        return SecretStr(file.get_secret_value())
    if value is not None and not value.get_secret_value():
        raise problem((key,), "must not be empty")
    return value


class SigningSecrets:
    """`secret` / `secrets` / `secret_file`: how a webhook or the callbacks sign (at most one of the three).

    A mixin of the sections that sign; the fields themselves are declared there.
    """

    secret: SecretStr | None
    secrets: list[SecretStr] | None
    secret_file: SecretFile | None

    def given_secrets(self) -> list[str]:
        """Which of the three keys are set, checked: a problem naming the key if they clash or are bad."""
        given = [k for k in ("secret", "secrets", "secret_file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise problem((given[1],), f"cannot be combined with {given[0]}; set only one")
        if self.secrets is not None and not self.secrets:
            raise problem(("secrets",), "must list at least one secret")
        if self.secret_file is not None:
            try:
                check_whsec(self.secret_file.get_secret_value())
            except ValueError as e:
                raise problem(("secret_file",), f"content {e}") from None
        return given

    def all_secrets(self) -> list[str]:
        """Plain signing secrets, newest first; every delivery is signed with each (rotation)."""
        if self.secret_file is not None:
            return [self.secret_file.get_secret_value()]
        if self.secrets is not None:
            return [s.get_secret_value() for s in self.secrets]
        return [self.secret.get_secret_value()] if self.secret is not None else []
