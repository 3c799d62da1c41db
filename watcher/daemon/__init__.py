"""`watcher run`: the daemon (start-up, wiring, supervision), its housekeeping loop, systemd's notify
protocol and the log set-up."""

from watcher.daemon.daemon import Daemon

__all__ = ["Daemon"]
