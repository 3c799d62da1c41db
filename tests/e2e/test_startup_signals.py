"""SIGHUP and SIGTERM while `watcher run` starts (issue 12 item 6).

Start-up takes a while with many watches (restoring them), and the API already answers meanwhile. A SIGHUP
then must not end the process (its default action does, with status 129 and no log line): it is handled, or
held back until it can be, and the watch-list reload it asks for happens once the daemon runs. A SIGTERM
then stops the daemon cleanly with status 0.

The signals start from the first moment the process shows it guards them (blocked or caught, read from
/proc), or from the moment its API accepts connections, whichever comes first: before that instant, only
the Python interpreter itself is running.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import DaemonProc, Receiver, Sim, write_config
from tests.e2e.outage_support import assert_all_json, until
from tests.integration.test_store_contract import reg
from tests.support.ports import free_port
from watcher.store.sqlite import SQLiteStore

pytestmark = pytest.mark.slow

# Enough watches that restoring them at start-up takes a noticeable moment on this machine.
WATCHES = 60_000


def guards(pid: int, sig: int) -> bool:
    """True once the process blocks or catches `sig` (its main thread's masks in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    masks = {
        k: int(v, 16)
        for k, v in (ln.split(":\t") for ln in status.splitlines() if ln[:6] in ("SigBlk", "SigCgt"))
    }
    bit = 1 << (sig - 1)
    return bool((masks.get("SigBlk", 0) | masks.get("SigCgt", 0)) & bit)


def listening(port: int) -> bool:
    """True if something accepts connections on the loopback port."""
    with socket.socket() as s:
        s.settimeout(0.05)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def big_store(tmp_path: Path) -> None:
    """A state file with WATCHES unfinished watches, so that the daemon's restore takes a while."""
    store = SQLiteStore(tmp_path / "state" / "watcher.db")
    await store.open()
    for start in range(0, WATCHES, 5000):
        await store.register([reg(n) for n in range(start, start + 5000)], 1_700_000_000.0)
    await store.close()


async def first_guarded_moment(daemon: DaemonProc, port: int, sig: int, timeout: float = 30.0) -> float:
    """Wait, polling every millisecond or so, until the daemon guards `sig` or its API listens."""
    assert daemon.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.proc.poll() is None, daemon.log_text()[-2000:]
        if guards(daemon.proc.pid, sig) or listening(port):
            return time.time()
        await asyncio.sleep(0.001)
    raise AssertionError("the daemon neither guarded the signal nor listened in time")


def started_at(daemon: DaemonProc) -> float | None:
    for e in daemon.log_events():
        if e.get("event") == "daemon.started":
            return datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
    return None


async def test_sighup_during_start_up_is_applied_once_running(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any
) -> None:
    """SIGHUP every few milliseconds from the first moment of start-up until after it: the daemon lives,
    logs the request, reloads the watch-list once it runs, and stops with 0."""
    await big_store(tmp_path)
    (tmp_path / "watchlist.txt").write_text("")
    port = free_port()
    daemon: DaemonProc = daemon_factory(write_config(tmp_path, sim, receiver, port), port)
    daemon.start()
    assert daemon.proc is not None
    first = await first_guarded_moment(daemon, port, signal.SIGHUP)
    sent_before_start = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert daemon.proc.poll() is None, f"exit {daemon.proc.returncode}: {daemon.log_text()[-2000:]}"
        daemon.signal(signal.SIGHUP)
        started = started_at(daemon)
        if started is None:
            sent_before_start += 1
        elif time.time() > started + 1.0:
            break
        await asyncio.sleep(0.005)
    started = started_at(daemon)
    assert started is not None, "the daemon never started"
    assert first < started and sent_before_start >= 10, (sent_before_start, started - first)
    await daemon.wait_ready()
    assert daemon.stop() == 0
    events = assert_all_json(daemon.log_path)
    names = [e["event"] for e in events]
    assert any(e.get("deferred") for e in events if e["event"] == "watchlist.reload_requested"), names
    after = names[names.index("daemon.started") :]
    assert after.count("watchlist.reloaded") >= 2, "the start-up SIGHUP's reload did not happen"


async def test_sigterm_during_start_up_stops_cleanly(
    tmp_path: Path, sim: Sim, receiver: Receiver, daemon_factory: Any
) -> None:
    """SIGTERM while the daemon is still starting: it stops without starting its loops, with status 0."""
    await big_store(tmp_path)
    (tmp_path / "watchlist.txt").write_text("")
    port = free_port()
    daemon: DaemonProc = daemon_factory(write_config(tmp_path, sim, receiver, port), port)
    daemon.start()
    assert daemon.proc is not None
    await first_guarded_moment(daemon, port, signal.SIGTERM)
    daemon.signal(signal.SIGTERM)

    async def exited() -> bool:
        return daemon.proc is not None and daemon.proc.poll() is not None

    await until(exited, 30, "exit after a SIGTERM during start-up")
    assert daemon.proc.returncode == 0, daemon.log_text()[-2000:]
    names = [e["event"] for e in assert_all_json(daemon.log_path)]
    assert "daemon.stopping" in names and "daemon.stopped" in names
    assert "daemon.started" not in names
