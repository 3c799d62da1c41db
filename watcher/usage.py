"""Command-line parsing that fails in one line: `watcher simulate`, `watcher bench` and the rest of the
`watcher` command print `watcher <command>: error: <reason>` and exit 2, never argparse's usage dump."""

from __future__ import annotations

import argparse
from typing import NoReturn


class UsageError(Exception):
    """Bad usage of a command; the message is the one line to print."""


class OneLineParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors raise `UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        """Raise the parse error as a `UsageError`."""
        raise UsageError(message)
