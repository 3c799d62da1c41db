"""A free loopback port, for a server that must be told its port before it starts."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port that was free a moment ago (bound, then released; nothing listens on it now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
