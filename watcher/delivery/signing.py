"""Standard Webhooks signatures: sign outgoing deliveries and verify incoming ones (SPEC §6).

A signature is `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`, where the key is the base64-decoded
secret after its `whsec_` prefix. During a secret rotation every configured secret signs, and the header
carries one space-separated entry per secret, so receivers holding either the old or the new secret accept
the delivery. Nothing in this module ever puts a secret in an exception message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105 - a format prefix, not a secret
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300.0

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"


def decode_secret(secret: str) -> bytes:
    """Return the HMAC key of a `whsec_…` secret; ValueError (without the secret) if it is malformed."""
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret is not valid base64 after the 'whsec_' prefix") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: one `v1,` entry per secret, space separated."""
    if not secrets:
        raise ValueError("at least one webhook secret is needed to sign")
    return " ".join(
        f"{SIGNATURE_VERSION},{_digest(decode_secret(s), msg_id, timestamp, body)}" for s in secrets
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's CIMultiDict is case-insensitive already; a plain dict from a test may not be.
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def verify(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """True if `headers` carry a fresh timestamp and a `v1` signature made with any of `secrets`.

    Comparison is constant-time; a timestamp further than `tolerance_s` from `now` (either way) fails, which
    bounds how long a captured request can be replayed.
    """
    msg_id = _header(headers, HEADER_ID)
    ts_text = _header(headers, HEADER_TIMESTAMP)
    sig_header = _header(headers, HEADER_SIGNATURE)
    if not msg_id or not ts_text or not sig_header:
        return False
    try:
        timestamp = int(ts_text)
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    offered = [
        entry.split(",", 1)[1].encode()
        for entry in sig_header.split(" ")
        if entry.startswith(SIGNATURE_VERSION + ",")
    ]
    if not offered:
        return False
    for secret in secrets:
        try:
            key = decode_secret(secret)
        except ValueError:
            continue
        expected = _digest(key, msg_id, timestamp, body).encode()
        # Check every offered entry without early exit per entry so timing does not reveal which matched.
        matched = False
        for candidate in offered:
            matched |= hmac.compare_digest(expected, candidate)
        if matched:
            return True
    return False
