"""The one way a test runs the real daemon in its own event loop: `InProcessDaemon`.

`start()` runs `Daemon.run()` as a task and waits until it is ready (or raises what ended it during
start-up); `stop()` asks it to stop and returns its exit status. Its own metrics registry, no signal
handlers; anything else `Daemon` takes (a store, a housekeeping pause) passes through.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from tests.support.eventually import eventually
from watcher.config import Settings
from watcher.daemon import Daemon


class InProcessDaemon:
    """A `Daemon` running in this event loop."""

    def __init__(self, settings: Settings, **kw: Any) -> None:
        kw.setdefault("registry", CollectorRegistry())
        self.settings = settings
        self.daemon = Daemon(settings, handle_signals=False, **kw)
        self.base = f"http://{settings.api.listen}"
        self.task: asyncio.Task[int] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def start(self, timeout: float = 20.0) -> None:
        """Run it and wait until it is ready; what stopped it during start-up is raised here."""
        task = self.task = asyncio.create_task(self.daemon.run())
        state = self.daemon

        def ready_or_done() -> bool:
            return task.done() or (state.state is not None and state.state.ready)

        await eventually(ready_or_done, timeout, "the daemon ready")
        if task.done():
            code = await task  # raises what stopped it
            raise AssertionError(f"the daemon exited with {code} during start-up")

    async def stop(self, timeout: float = 20.0) -> int:
        """Ask it to stop; its exit status."""
        assert self.task is not None
        self.daemon.request_stop()
        return await asyncio.wait_for(self.task, timeout)
