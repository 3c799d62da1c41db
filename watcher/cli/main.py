"""The `watcher` command: run, check-config, demo, simulate.

Exit codes (SPEC §4): 0 clean stop, 2 bad usage or configuration, 1 runtime failure. A user never sees a
traceback: expected errors are one line naming what to fix, unexpected ones are logged with their type.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from watcher import __version__
from watcher.errors import ConfigError, StartupError, StoreError, WatcherError

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2
# Held back from the first moment of `watcher run` until the daemon handles them on its event loop: the
# default action of SIGHUP ends the process, and start-up (reading the config, opening and restoring the
# store) can take seconds while the API already answers. Blocked, a signal waits and is then handled.
RUN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        default=os.environ.get("WATCHER_CONFIG"),
        help="TOML configuration file (default: $WATCHER_CONFIG, else $CONFIGURATION_DIRECTORY/watcher.toml; "
        "environment WATCHER_* overrides it)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand but `simulate`, which parses its own arguments."""
    parser = argparse.ArgumentParser(prog="watcher", description="Watch Oration jobs and deliver webhooks.")
    parser.add_argument("--version", action="version", version=f"job-watcher {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _config_arg(sub.add_parser("run", help="run the daemon"))
    _config_arg(
        sub.add_parser("check-config", help="validate the configuration and print it, secrets masked")
    )
    demo = sub.add_parser("demo", help="a self-contained run: simulated upstream, daemon, webhook receiver")
    demo.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    sub.add_parser("simulate", help="serve the simulated Oration jobs API (see `watcher simulate --help`)")
    sub.add_parser(
        "migrate", help="apply pending store schema migrations and exit (see `watcher migrate --help`)"
    )
    sub.add_parser("watches", help="add, list, show or rm watches of a running daemon (`watches --help`)")
    sub.add_parser("deliveries", help="list or retry webhook deliveries of a running daemon")
    sub.add_parser(
        "webhooks", help="send a test event to a webhook of a running daemon (`webhooks test NAME`)"
    )
    sub.add_parser("bench", help="measure the performance targets of SPEC §9 (see `watcher bench --help`)")
    return parser


def _print_config_error(exc: ConfigError) -> None:
    print("configuration is invalid:", file=sys.stderr)
    for line in exc.problems:
        print(f"  {line}", file=sys.stderr)


def cmd_check_config(path: str | None) -> int:
    """Validate and print the effective configuration with secrets masked."""
    from watcher.config import load_config, render_config
    from watcher.daemon.parts import webhook_targets

    try:
        settings = load_config(path)
        webhook_targets(settings)  # compiles each template and renders a sample event with it
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_USAGE
    for line in settings.unknown_event_types():
        print(f"warning: {line}", file=sys.stderr)
    print(render_config(settings), end="")
    return EXIT_OK


def cmd_run(path: str | None) -> int:
    """Run the daemon until SIGTERM/SIGINT."""
    import asyncio

    from watcher.config import load_config
    from watcher.daemon import Daemon
    from watcher.daemon.logs import configure_logging, route_process_errors

    try:
        settings = load_config(path)
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_USAGE
    configure_logging(settings.log.level, settings.log.resolved_format(sys.stdout.isatty()))
    route_process_errors()
    import structlog

    log = structlog.get_logger("watcher.cli")
    try:
        daemon = Daemon(settings, tune_gc=True, load_config=lambda: load_config(path))
        return asyncio.run(daemon.run())
    except ConfigError as exc:  # a template that does not render its sample event (SPEC §15)
        _print_config_error(exc)
        return EXIT_USAGE
    except StartupError as exc:
        log.error("daemon.refused_to_start", reason=str(exc))
        print(f"watcher: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        log.error("daemon.store_failed", reason=str(exc))
        print(f"watcher: store: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except WatcherError as exc:
        log.error("daemon.failed", reason=str(exc))
        print(f"watcher: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # last line of defence: one line, the type, no traceback for the user
        log.exception("daemon.crashed", error=type(exc).__name__)
        print(f"watcher: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `watcher` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["run"] and argv is None:
        signal.pthread_sigmask(signal.SIG_BLOCK, RUN_SIGNALS)  # `Daemon.run` unblocks them
    if args_list and args_list[0] == "simulate":
        from watcher.devtools.simulate import simulate_main

        return simulate_main(args_list[1:])
    if args_list and args_list[0] == "bench":
        from watcher.bench import bench_main

        return bench_main(args_list[1:])
    if args_list and args_list[0] in ("watches", "deliveries", "webhooks"):
        from watcher.cli.client import client_main

        return client_main(args_list)
    if args_list and args_list[0] == "migrate":
        from watcher.cli.migrate import migrate_main

        return migrate_main(args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    if args.command == "run":
        return cmd_run(args.config)
    if args.command == "check-config":
        return cmd_check_config(args.config)
    if args.command == "demo":
        from watcher.devtools.demo import demo_main

        return demo_main(timeout_s=args.timeout)
    parser.print_help(sys.stderr)
    return EXIT_USAGE
