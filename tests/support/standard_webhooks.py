"""An independent Standard Webhooks verifier and a scriptable receiver for tests.

Deliberately shares no code with `watcher.signing`: a bug there must not be mirrored here. Used in-process
(`TestReceiver`) and as a standalone script for end-to-end tests:

    python tests/support/standard_webhooks.py --port 0 --secret whsec_... --out deliveries.jsonl

prints one JSON line `{"event": "listening", "url": ...}`, appends each accepted delivery as a JSON line to
`--out`, and obeys `PUT /_ctl/status {"status": 503}` (`null` resets) and `GET /_ctl/stats`.
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
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

TOLERANCE_S = 300.0
REDIRECT_PATH = "/_redirected"


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


class TestReceiver:
    """A loopback aiohttp server that verifies, records and answers webhooks as scripted."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        secrets: Sequence[str],
        *,
        now: Callable[[], float] = time.time,
        tolerance_s: float = TOLERANCE_S,
        out: Path | None = None,
    ) -> None:
        self.secrets = tuple(secrets)
        self._now = now
        self._tolerance_s = tolerance_s
        self._out = out
        self._script: list[tuple[str | None, int, dict[str, str]]] = []
        self.fixed_status: int | None = None
        self.delay_s = 0.0
        self.deliveries: list[Verified] = []
        self.attempts: Counter[str] = Counter()
        self.rejected = 0
        self.not_strict = 0  # signed bodies that a strict JSON parser refused (answered 400)
        self.redirect_hits = 0
        self.in_progress = 0  # verified requests being answered right now
        self.max_in_progress = 0
        self.requests: list[tuple[str, float]] = []  # (webhook-id, monotonic arrival) of verified requests
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen (port 0: a free one) and return the URL to post to."""
        app = web.Application()
        app.router.add_put("/_ctl/status", self._ctl_status)
        app.router.add_get("/_ctl/stats", self._ctl_stats)
        app.router.add_route("*", REDIRECT_PATH, self._redirected)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.url = f"http://{bound_host}:{bound_port}/hook"
        return self.url

    async def stop(self) -> None:
        """Stop listening; safe to call twice."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def fail_next(
        self, n: int, status: int = 503, retry_after: float | None = None, *, only_id: str | None = None
    ) -> None:
        """Answer the next `n` verified requests (for `only_id`, if given) with `status`.

        3xx answers carry a Location pointing at a path that counts hits, to prove redirects are not followed.
        """
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = f"{retry_after:g}"
        if 300 <= status < 400:
            headers["Location"] = self.url.rsplit("/", 1)[0] + REDIRECT_PATH
        self._script.extend((only_id, status, headers) for _ in range(n))

    def set_status(self, status: int | None) -> None:
        """Answer every verified request with `status` until reset with None."""
        self.fixed_status = status

    def ids(self) -> list[str]:
        """Ids of accepted deliveries in arrival order."""
        return [d.id for d in self.deliveries]

    async def wait_for(self, count: int, within_s: float = 5.0) -> list[Verified]:
        """Wait until at least `count` deliveries were accepted; AssertionError after `within_s` seconds."""
        deadline = time.monotonic() + within_s
        while len(self.deliveries) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"got {len(self.deliveries)} deliveries, expected {count}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue
        return list(self.deliveries)

    async def wait_attempts(self, webhook_id: str, count: int, within_s: float = 5.0) -> None:
        """Wait until `webhook_id` was seen in at least `count` verified requests."""
        deadline = time.monotonic() + within_s
        while self.attempts[webhook_id] < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{webhook_id}: {self.attempts[webhook_id]} attempts, expected {count}")
            await asyncio.sleep(0.005)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            msg_id, timestamp = verify_standard(
                self.secrets, request.headers, body, self._now(), self._tolerance_s
            )
        except SignatureError as exc:
            self.rejected += 1
            self._changed.set()
            return web.json_response({"error": str(exc)}, status=401)
        try:
            parsed = strict_json(body)
        except NotStrictJSON as exc:
            self.not_strict += 1
            self._changed.set()
            return web.json_response({"error": f"not strict JSON: {exc}"}, status=400)
        self.attempts[msg_id] += 1
        self.requests.append((msg_id, time.monotonic()))
        self._changed.set()
        self.in_progress += 1
        self.max_in_progress = max(self.max_in_progress, self.in_progress)
        try:
            return await self._answer(msg_id, timestamp, parsed, request)
        finally:
            self.in_progress -= 1

    async def _answer(self, msg_id: str, timestamp: int, parsed: Any, request: web.Request) -> web.Response:
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        scripted = next((i for i, entry in enumerate(self._script) if entry[0] in (None, msg_id)), None)
        if scripted is not None:
            _, status, headers = self._script.pop(scripted)
            return web.Response(status=status, headers=headers, text="scripted")
        if self.fixed_status is not None and not 200 <= self.fixed_status < 300:
            return web.Response(status=self.fixed_status, text="fixed status")
        verified = Verified(
            id=msg_id,
            type=parsed.get("type") if isinstance(parsed, dict) else None,
            body=parsed,
            timestamp=timestamp,
            received_at=time.time(),
            attempt=self.attempts[msg_id],
            headers=dict(request.headers),
        )
        self.deliveries.append(verified)
        if self._out is not None:
            line = {
                k: getattr(verified, k) for k in ("id", "type", "timestamp", "received_at", "attempt", "body")
            }
            with self._out.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
        self._changed.set()
        return web.Response(status=self.fixed_status or 204)

    async def _redirected(self, request: web.Request) -> web.Response:
        self.redirect_hits += 1
        return web.Response(status=200, text="a redirect was followed")

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


async def _serve(args: argparse.Namespace) -> None:
    receiver = TestReceiver(args.secret, out=args.out, tolerance_s=args.tolerance)
    url = await receiver.start(args.host, args.port)
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
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
