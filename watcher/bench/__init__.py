"""`watcher bench`: the performance figures of SPEC §9, measured on this machine against same-run baselines.

Each scenario is one module with an async `run(ctx) -> ScenarioResult`; every server it needs runs on
loopback in its own process and every wait has a deadline. The table goes to stdout, progress to stderr,
`--json FILE` keeps the whole run. Exit status: 0 when every scenario finished and every target held, 1 when
a target failed or a scenario could not finish, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from importlib import import_module
from pathlib import Path
from typing import Any

from watcher.bench import stores
from watcher.bench.harness import Context
from watcher.bench.report import ScenarioResult, render_table, to_json
from watcher.errors import WatcherError
from watcher.store.postgres.conn import parse_url
from watcher.usage import OneLineParser, UsageError

# Scenario name -> module; the order is the order of a full run (cheap and telling first).
SCENARIOS: dict[str, str] = {
    "throughput": "watcher.bench.throughput",
    "latency": "watcher.bench.latency",
    "upstream-calls": "watcher.bench.upstream_calls",
    "adaptive": "watcher.bench.adaptive",
    "register": "watcher.bench.register",
    "replicas": "watcher.bench.replicas",
    "scale": "watcher.bench.scale",
    "soak": "watcher.bench.soak",
}
# Run only when named: a soak takes ten minutes by default.
OPT_IN = frozenset({"soak"})
SCENARIO_TIMEOUT_S = 420.0
# `scale` builds and restores a million watches three times (more on PostgreSQL, with SQLite beside it).
TIMEOUTS_S = {"scale": 1800.0}
SOAK_EXTRA_S = 300.0  # `soak` runs as long as asked: its deadline is its duration plus start-up and drain
QUICK_SIZES = (1_000, 3_000)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part.replace("_", "")) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def _store(text: str) -> str:
    if text == "sqlite":
        return text
    if not stores.is_postgres(text):
        raise argparse.ArgumentTypeError("--store is sqlite or a postgresql://… URL")
    try:
        parse_url(text)
    except WatcherError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("store.url: ")) from None
    return text


def _parser() -> OneLineParser:
    p = OneLineParser(
        prog="watcher bench",
        description="Measure job-watcher against the performance targets of SPEC §9 on this machine.",
    )
    p.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of {', '.join(SCENARIOS)} (default: all but {', '.join(sorted(OPT_IN))})",
    )
    p.add_argument(
        "--json", type=Path, metavar="FILE", help="also write every figure and the machine as JSON"
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes and short windows (a smoke test, not figures)"
    )
    p.add_argument(
        "--store",
        type=_store,
        default="sqlite",
        metavar="sqlite|postgresql://…",
        help="store of the daemons under test; with a URL each scenario gets a fresh schema there, dropped"
        " afterwards (`replicas` needs one)",
    )
    p.add_argument(
        "--sizes", type=_sizes, metavar="N,N,…", help="watches per daemon in `scale` (default 10k,100k,1M)"
    )
    p.add_argument(
        "--window-s", type=float, metavar="S", help="length of each timed window (default 10, quick 1.5)"
    )
    p.add_argument(
        "--duration-s",
        type=float,
        metavar="S",
        help="how long `soak` runs (default 600, quick 30)",
    )
    p.add_argument(
        "--workdir", type=Path, metavar="DIR", help="keep databases and logs here (default: a temp dir)"
    )
    return p


async def _run_all(ctx: Context, names: Sequence[str]) -> list[ScenarioResult]:
    results = []
    for name in names:
        started = time.monotonic()
        run: Callable[[Context], Awaitable[ScenarioResult]] = import_module(SCENARIOS[name]).run
        timeout_s = TIMEOUTS_S.get(name, SCENARIO_TIMEOUT_S)
        if name == "soak" and ctx.duration_s is not None:
            timeout_s = max(timeout_s, ctx.duration_s + SOAK_EXTRA_S)
        try:
            res = await asyncio.wait_for(run(ctx), timeout_s)
        except TimeoutError:
            res = ScenarioResult(name, error=f"did not finish within {timeout_s:g}s")
        except (WatcherError, OSError) as exc:
            res = ScenarioResult(name, error=str(exc) or type(exc).__name__)
        finally:
            left = await stores.drop_fresh_schemas()
        res.notes.extend(f"schema not dropped, drop it by hand: {why}" for why in left)
        res.seconds = round(time.monotonic() - started, 1)
        ctx.say(f"{name}: done in {res.seconds:g}s" + (f" (error: {res.error})" if res.error else ""))
        results.append(res)
    return results


def selected(asked: Sequence[str]) -> list[str]:
    """The scenarios to run, in the order of a full run: those asked for, or all but the opt-in ones."""
    return [s for s in SCENARIOS if (s in asked if asked else s not in OPT_IN)]


def bench_main(argv: Sequence[str]) -> int:
    """Entry point of `watcher bench`: run the scenarios, print the table, optionally write JSON."""
    try:
        args = _parser().parse_args(list(argv))
        unknown = [s for s in args.scenarios if s not in SCENARIOS]
        if unknown:
            raise UsageError(f"unknown scenario {unknown[0]!r} (choose from {', '.join(SCENARIOS)})")
        if args.window_s is not None and args.window_s <= 0:
            raise UsageError("--window-s must be positive")
        if args.duration_s is not None and args.duration_s <= 0:
            raise UsageError("--duration-s must be positive")
    except UsageError as exc:
        print(f"watcher bench: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    names = selected(args.scenarios)
    store_doc: dict[str, Any] = {"kind": "sqlite"}
    if stores.is_postgres(args.store):
        try:
            version = asyncio.run(stores.server_version(args.store))
        except WatcherError as exc:
            print(f"watcher bench: error: {exc}", file=sys.stderr)
            return 1
        store_doc = {"kind": "postgresql", "where": parse_url(args.store).where, "server_version": version}
        print(f"bench: store {stores.describe(args.store)} (PostgreSQL {version})", file=sys.stderr)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="watcher-bench-") as tmp:
        workdir = args.workdir if args.workdir is not None else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        ctx = Context(
            workdir=workdir.resolve(),
            quick=args.quick,
            store=args.store,
            window_s=args.window_s or (1.5 if args.quick else 10.0),
            sizes=args.sizes or (QUICK_SIZES if args.quick else Context.sizes),
            duration_s=args.duration_s,
        )
        # SIGTERM (a CI timeout, `kill`) and SIGHUP (the terminal went away) stop the run as Ctrl-C does:
        # the scenarios' blocks unwind and stop their daemons, simulators and sinks, instead of leaving
        # them running without a parent.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.default_int_handler)
        try:
            results = asyncio.run(_run_all(ctx, names))
        except KeyboardInterrupt:
            print("watcher bench: stopped; no figures", file=sys.stderr)
            return 130
    print(render_table(results), end="")
    if args.json is not None:
        command = shlex.join(["watcher", "bench", *(stores.mask_password(a) for a in argv)])
        if store_doc["kind"] == "postgresql":
            store_doc["schemas"] = list(stores.used)  # each dropped when its scenario ended
        doc = to_json(
            results,
            command=command,
            started_at=started_at,
            seconds=time.monotonic() - started,
            store=store_doc,
        )
        args.json.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0 if all(r.passed for r in results) else 1
