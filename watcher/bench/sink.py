"""A healthy webhook receiver for `watcher bench`: verifies each delivery and notes when it arrived.

Run as `python -m watcher.bench.sink --port 0` with the signing secret in `$BENCH_WEBHOOK_SECRET` (never on
the command line, where `ps` would show it). It prints one JSON line `{"event": "listening", "url": …}`,
answers every verified delivery 204 at once, and serves what it received at `GET /_bench/deliveries`: per
delivery the webhook id, event type, job id, the arrival time, and the body's `detected_at` and the job's
`updatedAt`, so the bench can compute notify latency and detection lag without parsing logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from watcher.clock import parse_timestamp
from watcher.delivery.signing import HEADER_ID, verify

SECRET_ENV = "BENCH_WEBHOOK_SECRET"  # noqa: S105 - the name of a variable, not a secret


class Sink:
    """Records verified deliveries, the first one of each webhook id only (retries are not new events)."""

    def __init__(self, secret: str, now: Callable[[], float] = time.time) -> None:
        self._secrets = (secret,)
        self._now = now
        self._seen: set[str] = set()
        self.records: list[dict[str, Any]] = []
        self.rejected = 0

    async def handle(self, request: web.Request) -> web.Response:
        """Verify and record one delivery; arrival is taken before the body is parsed."""
        arrived = self._now()
        body = await request.read()
        if not verify(self._secrets, request.headers, body, arrived):
            self.rejected += 1
            return web.Response(status=401)
        msg_id = request.headers[HEADER_ID]
        if msg_id not in self._seen:
            self._seen.add(msg_id)
            payload = json.loads(body)
            data = payload.get("data", {})
            job = data.get("job") or {}
            self.records.append({
                "id": msg_id,
                "type": payload.get("type"),
                "job_id": job.get("id"),
                "received_at": arrived,
                "detected_at": parse_timestamp(data.get("detected_at")),
                "updated_at": parse_timestamp(job.get("updatedAt")),
            })  # fmt: skip
        return web.Response(status=204)

    async def deliveries(self, request: web.Request) -> web.Response:
        """What arrived so far, in arrival order."""
        return web.json_response({"deliveries": self.records, "rejected": self.rejected})

    def app(self) -> web.Application:
        """The aiohttp application: POST anywhere delivers, `GET /_bench/deliveries` reports."""
        app = web.Application()
        app.router.add_get("/_bench/deliveries", self.deliveries)
        app.router.add_post("/{tail:.*}", self.handle)
        return app


async def _serve(host: str, port: int, secret: str) -> None:
    runner = web.AppRunner(Sink(secret).app(), access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        print(json.dumps({"event": "listening", "url": f"http://{bound_host}:{bound_port}/hook"}), flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


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
