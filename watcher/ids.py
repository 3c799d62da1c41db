"""The job id's shape: a hyphenated UUID, in any case (it is stored lower-case). One pattern for the API's
validation and OpenAPI document, the watch-list file and the configuration's workspace ids."""

from __future__ import annotations

import re
from typing import Final

# Anchored for JSON Schema (`pattern`), which searches; `is_uuid` matches the whole text.
UUID_PATTERN: Final = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID: Final = re.compile(UUID_PATTERN)


def is_uuid(text: str) -> bool:
    """True if `text` is a hyphenated UUID, nothing before or after it (not even a newline)."""
    return _UUID.fullmatch(text) is not None
