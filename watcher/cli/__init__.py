"""The `watcher` command: argument parsing and dispatch (`main`), the API client commands (`client`) and
`watcher migrate` (`migrate`)."""

from watcher.cli.main import main

__all__ = ["main"]
