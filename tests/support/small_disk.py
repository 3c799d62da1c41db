"""A small file system for a state directory, that a test fills up, frees again, or makes read-only.

Where this process may mount (root with CAP_SYS_ADMIN), the directory is a tmpfs of a few MiB: `fill` writes
a filler file until the file system says ENOSPC, `free` deletes it, and `read_only` remounts it. Where it may
not, the same calls limit the size of the files the daemon process writes (RLIMIT_FSIZE, set on it from
outside with prlimit): a write past the limit fails with EFBIG, as a write to a full disk fails with ENOSPC.
The daemon's output must then go to a pipe, not to a file it would write past the limit.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

_FILLER = ".filler"


def _can_mount(path: Path, size: int) -> bool:
    if os.environ.get("WATCHER_TEST_SMALL_DISK") == "rlimit":  # to exercise the fallback where mount works
        return False
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class SmallDisk:
    """A state directory that can be filled, freed and made read-only; `mounted` says how (see above)."""

    def __init__(self, path: Path, size: int = 4 * 1024 * 1024) -> None:
        self.path = path
        self.size = size
        path.mkdir(parents=True, exist_ok=True)
        self.mounted = _can_mount(path, size)
        self.pid: int | None = None  # the daemon, for the RLIMIT_FSIZE fallback
        self._full_from_start = False

    @property
    def how(self) -> str:
        """ "tmpfs" or "rlimit"."""
        return "tmpfs" if self.mounted else "rlimit"

    def preexec(self) -> Callable[[], None]:
        """For `subprocess.Popen(preexec_fn=...)`: SIGXFSZ ignored (a write past the limit fails with EFBIG
        instead of killing the process), and if `fill` came before the start (no tmpfs), no file of the
        process may grow at all."""

        def setup() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            if self._full_from_start:
                resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))

        return setup

    def fill(self) -> None:
        """Leave no room: fill the tmpfs, or stop every file of the daemon from growing."""
        if self.mounted:
            fd = os.open(self.path / _FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                for size in (1 << 20, 1 << 16, 1 << 12, 1):  # big chunks first, then the last scraps
                    chunk = b"\0" * size
                    with contextlib.suppress(OSError):
                        while True:
                            os.write(fd, chunk)
            finally:
                os.close(fd)
            return
        if self.pid is None:
            self._full_from_start = True  # applied by `preexec` in the daemon about to start
            return
        biggest = max((p.stat().st_size for p in self.path.iterdir() if p.is_file()), default=0)
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (biggest, resource.RLIM_INFINITY))

    def free(self) -> None:
        """Give the room back."""
        self._full_from_start = False
        if self.mounted:
            (self.path / _FILLER).unlink(missing_ok=True)
            return
        assert self.pid is not None, "set .pid to the daemon's pid"
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    def read_only(self, on: bool) -> bool:
        """Make the directory read-only (or writable again); False if this process cannot."""
        if self.mounted:
            mode = "ro" if on else "rw"
            done = subprocess.run(
                ["mount", "-o", f"remount,{mode}", str(self.path)],
                capture_output=True,
                timeout=10,
                check=False,
            )
            return done.returncode == 0
        if os.geteuid() == 0:
            return False  # root writes through permissions, and there is no mount to make read-only
        self.path.chmod(0o555 if on else 0o755)
        return True

    def close(self) -> None:
        """Unmount (or undo the permissions)."""
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=10, check=False)
            self.mounted = False
        elif os.geteuid() != 0:
            self.path.chmod(0o755)
