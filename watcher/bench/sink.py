"""A healthy webhook receiver for `watcher bench`: verifies each delivery and notes when it arrived.

Run as `python -m watcher.bench.sink --port 0` with the signing secret in `$BENCH_WEBHOOK_SECRET` (never on
the command line, where `ps` would show it). It prints one JSON line `{"event": "listening", "url": …}`,
answers every verified delivery 204 at once, and serves what it received at `GET /_bench/deliveries`: per
delivery the webhook id, event type, job id, the arrival time, and the body's `detected_at` and the job's
`updatedAt`, so the bench can compute notify latency and detection lag without parsing logs. It is the
devtools receiver (`watcher.devtools.receiver.Receiver`) with these records and that route.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from watcher.clock import parse_timestamp
from watcher.devtools.receiver import ARRIVED, Receiver

SECRET_ENV = "BENCH_WEBHOOK_SECRET"  # noqa: S105 - the name of a variable, not a secret


class Sink(Receiver):
    """Records verified deliveries, the first one of each webhook id only (retries are not new events)."""

    def __init__(self, secret: str) -> None:
        super().__init__([secret], path="/hook", ok_status=204)
        self.records: list[dict[str, Any]] = []

    def record(self, msg_id: str, timestamp: int, body: Any, request: web.Request) -> dict[str, Any]:
        """The bench's figures of one delivery; kept in `records` for its first arrival only."""
        data = body.get("data", {}) if isinstance(body, dict) else {}
        job = data.get("job") or {}
        found = {
            "id": msg_id,
            "type": body.get("type") if isinstance(body, dict) else None,
            "job_id": job.get("id"),
            "received_at": request[ARRIVED],
            "detected_at": parse_timestamp(data.get("detected_at")),
            "updated_at": parse_timestamp(job.get("updatedAt")),
        }
        if self.attempts[msg_id] == 1:
            self.records.append(found)
        return found

    def delivery_id(self, delivery: Any) -> str:
        """The webhook id of a record."""
        return str(delivery["id"])

    def extra_routes(self, app: web.Application) -> None:
        """`GET /_bench/deliveries`: what arrived so far, in arrival order."""
        app.router.add_get("/_bench/deliveries", self._report)

    async def _report(self, request: web.Request) -> web.Response:
        return web.json_response({"deliveries": self.records, "rejected": self.rejected})


async def _serve(host: str, port: int, secret: str) -> None:
    sink = Sink(secret)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        url = await sink.start(host, port)
        print(json.dumps({"event": "listening", "url": url}), flush=True)
        await stop.wait()
    finally:
        await sink.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; 2 if the secret is missing."""
    parser = argparse.ArgumentParser(prog="python -m watcher.bench.sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        print(f"watcher.bench.sink: set {SECRET_ENV} to the webhook's whsec_ secret", file=sys.stderr)
        return 2
    asyncio.run(_serve(args.host, args.port, secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
