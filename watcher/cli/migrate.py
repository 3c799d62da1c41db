"""`watcher migrate`: apply the store's pending schema migrations, report the version, and exit.

`watcher run` migrates at start-up as well, so this command is optional: it lets a deployment migrate once
before rolling out replicas (a Kubernetes Job, a `ExecStartPre=`), and shows an operator what a start would
do. On PostgreSQL the migrations run under an advisory lock, so it is safe next to running replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from watcher.errors import ConfigError, StoreError

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The arguments of `watcher migrate`."""
    parser = argparse.ArgumentParser(
        prog="watcher migrate",
        description="Apply pending store schema migrations (store.url) and exit.",
    )
    parser.add_argument(
        "-c",
        "--config",
        default=os.environ.get("WATCHER_CONFIG"),
        help="TOML configuration file (default: $WATCHER_CONFIG; environment WATCHER_* overrides it)",
    )
    return parser


async def migrate_url(url: str) -> str:
    """Migrate the store `url` names; one line saying where, which version, and what was applied."""
    if url.startswith(("postgresql:", "postgres:")):
        from watcher.store.postgres.conn import create_pool, migrate, parse_url

        target = parse_url(url)
        pool = await create_pool(target)
        try:
            version, applied = await migrate(pool, target)
        finally:
            await pool.close()
        where = target.where + (f" schema {target.schema}" if target.schema else "")
        done = f"applied {', '.join(map(str, applied))}" if applied else "already up to date"
        return f"store at {where}: schema version {version} ({done})"
    from watcher.store import open_store

    store = open_store(url)
    await store.open()  # SQLite migrates in open(); the memory store has nothing to migrate
    await store.close()
    return f"store {url.split('?', 1)[0]}: schema up to date"


def migrate_main(argv: Sequence[str]) -> int:
    """Entry point of `watcher migrate`: 0 migrated, 2 bad usage or configuration, 1 store failure."""
    from watcher.config import load_config

    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        print("configuration is invalid:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return EXIT_USAGE
    try:
        print(asyncio.run(migrate_url(settings.resolved_store_url())))
    except StoreError as exc:
        print(f"watcher: store: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK
