"""The exception hierarchy: one root, one subclass per cause, messages that name what to fix."""


class WatcherError(Exception):
    """Root of every error job-watcher raises on purpose."""


class ConfigError(WatcherError):
    """The configuration is invalid; `problems` holds one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class StoreError(WatcherError):
    """The store cannot be opened, migrated or written."""


class LeaseLost(StoreError):
    """A write was fenced off because another worker took over the lease."""


class UpstreamError(WatcherError):
    """The upstream API could not be used at all (not a per-poll outcome)."""


class StartupError(WatcherError):
    """The daemon refuses to start (e.g. an unsafe listen address); the message is one line."""
