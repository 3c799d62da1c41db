"""The exception hierarchy: one root, one subclass per cause, messages that name what to fix."""


class WatcherError(Exception):
    """Root of every error job-watcher raises on purpose."""


class ConfigError(WatcherError):
    """The configuration is invalid; `problems` holds one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class StoreError(WatcherError):
    """The store cannot be opened, migrated or written.

    Raised as is, it means this request failed (its data or statement): another request may succeed, so
    a loop contains it to the item it was handling. `StoreUnavailable` is the store as a whole being out.
    """


class StoreUnavailable(StoreError):
    """The store cannot be used right now: unreachable, restarting, disk full, read-only or locked.

    Expected and temporary from the daemon's point of view (SPEC §16): loops that need the store pause
    and retry with backoff, `/readyz` answers 503, and nothing is lost. Never a reason to exit.
    """


class StartupError(WatcherError):
    """The daemon refuses to start (e.g. an unsafe listen address); the message is one line."""
