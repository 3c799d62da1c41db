"""`watcher simulate`: serve the simulated Oration jobs API until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

from watcher.config.tls import TlsFileError, server_context
from watcher.devtools.simulate.faults import FAULT_KINDS, POISON_VARIANTS, Faults
from watcher.devtools.simulate.jobs import random_script
from watcher.devtools.simulate.jobtypes import parse_scenario
from watcher.devtools.simulate.server import Simulator
from watcher.models import KNOWN_STATUSES
from watcher.usage import OneLineParser, UsageError


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1]")
    return value


def _parser() -> OneLineParser:
    p = OneLineParser(
        prog="watcher simulate",
        description="Serve a simulated Oration jobs API. The default credentials are throwaway values "
        "for local testing only.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081, help="0 picks a free port (default 8081)")
    p.add_argument("--token", default="sim-token", help="bearer token clients must send (local testing)")
    p.add_argument("--api-key", default="sim-key", help="x-api-key clients must send (local testing)")
    p.add_argument("--workspace-slug", default="sim", help="x-workspace-slug clients must send")
    p.add_argument(
        "--workspace",
        action="append",
        default=[],
        metavar="SLUG",
        help="serve another workspace, with the same token and api key (repeatable)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for faults and generated jobs")
    for kind in FAULT_KINDS:
        p.add_argument(f"--fault-{kind.replace('_', '-')}", type=_fraction, default=0.0, metavar="FRACTION")
    p.add_argument(
        "--poison-variant",
        choices=POISON_VARIANTS,
        default="",
        help="the poison body of --fault-poison answers (default: any of them, drawn per answer)",
    )
    p.add_argument(
        "--fault-workspace",
        default="",
        metavar="SLUG",
        help="the --fault-* fractions hit only this workspace's requests (default: every workspace)",
    )
    p.add_argument("--retry-after-s", type=float, default=1.0, help="Retry-After of 429 and 503 answers")
    p.add_argument("--slow-s", type=float, default=5.0, help="delay of slow answers")
    p.add_argument("--jobs", type=int, default=0, metavar="N", help="create N jobs with random lifecycles")
    p.add_argument(
        "--scenario",
        metavar="FILE",
        help="JSON list of job specs, as for POST /_sim/jobs; or {types, time_scale, jobs}: job types with"
        ' duration distributions, then a spec {"type": NAME} draws its duration',
    )
    p.add_argument(
        "--unknown-jobs",
        metavar="STATUS",
        choices=sorted(KNOWN_STATUSES),
        help="answer any UUID not created through /_sim/ as a job stuck in STATUS (load tests; default 404)",
    )
    p.add_argument("--max-log", type=int, default=100_000, metavar="N", help="requests kept in the log")
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's unencrypted private key (PEM)")
    return p


def _tls(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server context of --tls-cert/--tls-key, or None for plain HTTP; UsageError naming the flag."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UsageError("--tls-cert and --tls-key go together")
    try:
        return server_context(Path(cert), Path(key))
    except TlsFileError as exc:
        flag = "--tls-cert" if exc.key == "tls_cert_file" else "--tls-key"
        raise UsageError(f"{flag}: {str(exc).replace('tls_cert_file', '--tls-cert')}") from None


def _build(argv: list[str]) -> tuple[Simulator, str, int, ssl.SSLContext | None]:
    """Parse the command line into a ready simulator (and its TLS context, or None); raises UsageError with
    a one-line reason."""
    args = _parser().parse_args(argv)
    tls = _tls(args.tls_cert, args.tls_key)
    if args.jobs < 0 or not 0 <= args.port <= 65535:
        raise UsageError("--jobs must be >= 0 and --port in 0..65535")
    try:
        faults = Faults(
            **{kind: getattr(args, f"fault_{kind}") for kind in FAULT_KINDS},
            retry_after_s=args.retry_after_s,
            slow_s=args.slow_s,
            poison_variant=args.poison_variant,
            workspace=args.fault_workspace,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    served = {args.workspace_slug, *args.workspace}
    if args.fault_workspace and args.fault_workspace not in served:
        raise UsageError(f"--fault-workspace {args.fault_workspace!r} is not a served workspace")
    rng = random.Random(args.seed)
    if args.max_log < 0:
        raise UsageError("--max-log must be >= 0")
    sim = Simulator(
        token=args.token,
        api_key=args.api_key,
        workspace_slug=args.workspace_slug,
        workspaces={
            slug: (args.token, args.api_key) for slug in args.workspace if slug != args.workspace_slug
        },
        rng=rng,
        faults=faults,
        unknown_jobs=args.unknown_jobs,
        max_log=args.max_log,
    )
    specs: Any = []
    if args.scenario:
        try:
            with open(args.scenario, encoding="utf-8") as fh:
                sim.job_types, sim.time_scale, specs = parse_scenario(json.load(fh))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--scenario {args.scenario}: {exc}") from None
    for i, spec in enumerate(specs):
        try:
            sim.add_job_spec(spec)
        except (KeyError, ValueError) as exc:
            raise UsageError(f"--scenario {args.scenario}: job {i}: {exc}") from None
    for _ in range(args.jobs):
        sim.add_job(script=random_script(rng))
    return sim, args.host, args.port, tls


async def _serve(sim: Simulator, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before binding so that a SIGTERM right after the "listening" line still exits cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        url = await sim.start(host, port, tls)
        print(json.dumps({"event": "listening", "url": url}), flush=True)
        await stop.wait()
    finally:
        await sim.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def simulate_main(argv: list[str]) -> int:
    """Entry point of `watcher simulate`: 0 after SIGINT/SIGTERM, 2 on bad usage, 1 if it cannot serve."""
    try:
        sim, host, port, tls = _build(argv)
    except UsageError as exc:
        print(f"watcher simulate: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return asyncio.run(_serve(sim, host, port, tls))
    except OSError as exc:
        print(f"watcher simulate: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
