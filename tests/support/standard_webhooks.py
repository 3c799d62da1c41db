"""An independent Standard Webhooks verifier and strict JSON parser, and the tests' receiver built on them.

The verifier and the parser deliberately share no code with `watcher.delivery.signing` and
`watcher.strictjson`: a bug there must not be mirrored here. The receiver around them is the devtools one
(`watcher.devtools.receiver`). Used in-process (`TestReceiver`) and as a standalone script for end-to-end
tests:

    python tests/support/standard_webhooks.py --port 0 --secret whsec_... --out deliveries.jsonl

prints one JSON line `{"event": "listening", "url": ...}`, appends each accepted delivery as a JSON line to
`--out`, and obeys `PUT /_ctl/status {"status": 503}` (`null` resets) and `GET /_ctl/stats`. With
`--tls-cert`/`--tls-key` it serves HTTPS, and with `--tls-client-ca` too it requires a client certificate.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import math
import signal
import ssl
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from watcher.devtools.receiver import Receiver
from watcher.devtools.receiver import SignatureError as ReceiverSignatureError

TOLERANCE_S = 300.0


class SignatureError(Exception):
    """Why a request failed verification."""


class NotStrictJSON(ValueError):
    """A body that a strict RFC 8259 parser refuses."""


def _reject_constant(name: str) -> None:
    raise NotStrictJSON(f"{name} is not JSON")


def strict_json(body: bytes) -> Any:
    """Parse `body` as a strict RFC 8259 parser does, or raise `NotStrictJSON`.

    UTF-8 only (Python's own decoder refuses encoded surrogates); no NaN, Infinity or -Infinity; no
    number out of a double's range (Python would read 1e400 as inf); no lone surrogate, escaped (\\ud800)
    or not, in a string or a key. Independent of `watcher.strictjson` on purpose.
    """
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise NotStrictJSON(str(exc)) from None
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise NotStrictJSON(f"number out of range: {item!r}")
        texts: list[Any] = []
        if isinstance(item, dict):
            texts = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            texts = [item]
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise NotStrictJSON(f"lone surrogate in {text[:40]!r}") from None
    return value


def verify_standard(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_s: float = TOLERANCE_S,
) -> tuple[str, int]:
    """Check a request the way a Standard Webhooks receiver does; return (id, timestamp) or raise."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lowered["webhook-id"]
        ts_text = lowered["webhook-timestamp"]
        sig_header = lowered["webhook-signature"]
    except KeyError as exc:
        raise SignatureError(f"missing header {exc.args[0]}") from None
    if not ts_text.isdigit():
        raise SignatureError("timestamp is not an integer")
    timestamp = int(ts_text)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError("timestamp outside tolerance")
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    offered = [part[3:] for part in sig_header.split() if part.startswith("v1,")]
    for secret in secrets:
        if not secret.startswith("whsec_"):
            raise SignatureError("receiver secret lacks whsec_ prefix")
        key = base64.b64decode(secret[len("whsec_") :])
        expected = base64.b64encode(hmac.new(key, to_sign, hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest(expected, sig) for sig in offered):
            return msg_id, timestamp
    raise SignatureError("no matching v1 signature")


@dataclass(frozen=True)
class Verified:
    """One verified request that was answered 2xx."""

    id: str
    type: str | None
    body: Any
    timestamp: int
    received_at: float
    attempt: int  # how many verified requests carried this id so far, this one included
    headers: dict[str, str] = field(repr=False)


class TestReceiver(Receiver):
    """The devtools receiver (`watcher.devtools.receiver`), verifying with this module's own code.

    Its signature check and JSON parser are this module's, so a bug in `watcher.delivery.signing` or
    `watcher.strictjson` cannot be mirrored here; what it records is a `Verified`, and it can append each
    to a JSON-lines file and obey a control API when it runs as a script.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        tolerance_s: float = TOLERANCE_S,
        out: Path | None = None,
    ) -> None:
        super().__init__(secrets, tolerance_s=tolerance_s, path="/hook", ok_status=204)
        self._out = out
        self.not_strict = 0  # signed bodies that a strict JSON parser refused (answered 400)

    def check(self, headers: Mapping[str, str], body: bytes, now: float) -> tuple[str, int]:
        """`verify_standard`, this module's own check."""
        try:
            return verify_standard(self.secrets, headers, body, now, self._tolerance_s)
        except SignatureError as exc:
            raise ReceiverSignatureError(str(exc)) from None

    def parse(self, body: bytes) -> Any:
        """`strict_json`, this module's own strict parser."""
        try:
            return strict_json(body)
        except NotStrictJSON as exc:
            self.not_strict += 1
            raise ValueError(f"not strict JSON: {exc}") from None

    def record(self, msg_id: str, timestamp: int, body: Any, request: web.Request) -> Verified:
        """A `Verified`, appended to `--out` when given."""
        verified = Verified(
            id=msg_id,
            type=body.get("type") if isinstance(body, dict) else None,
            body=body,
            timestamp=timestamp,
            received_at=time.time(),
            attempt=self.attempts[msg_id],
            headers=dict(request.headers),
        )
        if self._out is not None:
            line = {
                k: getattr(verified, k) for k in ("id", "type", "timestamp", "received_at", "attempt", "body")
            }
            with self._out.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
        return verified

    def delivery_id(self, delivery: Any) -> str:
        """The id of a `Verified`."""
        return str(delivery.id)

    def extra_routes(self, app: web.Application) -> None:
        """`PUT /_ctl/status` and `GET /_ctl/stats`, for the end-to-end tests that run this as a script."""
        app.router.add_put("/_ctl/status", self._ctl_status)
        app.router.add_get("/_ctl/stats", self._ctl_stats)

    async def wait_attempts(self, webhook_id: str, count: int, within_s: float = 5.0) -> None:
        """Wait until `webhook_id` was seen in at least `count` verified requests."""
        deadline = time.monotonic() + within_s
        while self.attempts[webhook_id] < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{webhook_id}: {self.attempts[webhook_id]} attempts, expected {count}")
            await asyncio.sleep(0.005)

    async def _ctl_status(self, request: web.Request) -> web.Response:
        doc = await request.json()
        status = doc.get("status") if isinstance(doc, dict) else None
        if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
            return web.json_response({"error": "status must be an HTTP status or null"}, status=400)
        self.set_status(status)
        return web.json_response({"status": status})

    async def _ctl_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "deliveries": len(self.deliveries),
                "unique": len(set(self.ids())),
                "attempts": sum(self.attempts.values()),
                "rejected": self.rejected,
                "not_strict": self.not_strict,
                "redirect_hits": self.redirect_hits,
                "status": self.fixed_status,
            }
        )


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """HTTPS with --tls-cert/--tls-key; with --tls-client-ca too, only clients with a certificate it signs."""
    if args.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(args.tls_client_ca)
    return ctx


async def _serve(args: argparse.Namespace) -> None:
    receiver = TestReceiver(args.secret, out=args.out, tolerance_s=args.tolerance)
    url = await receiver.start(args.host, args.port, _tls(args))
    print(json.dumps({"event": "listening", "url": url}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await receiver.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the receiver until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret", action="append", required=True, help="whsec_ secret; repeat for rotation")
    parser.add_argument("--out", type=Path, default=None, help="append accepted deliveries as JSON lines")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE_S)
    parser.add_argument("--tls-cert", type=Path, default=None, help="serve HTTPS with this certificate")
    parser.add_argument("--tls-key", type=Path, default=None, help="the key of --tls-cert")
    parser.add_argument("--tls-client-ca", type=Path, default=None, help="require client certificates (mTLS)")
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
