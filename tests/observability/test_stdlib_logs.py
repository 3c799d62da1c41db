"""Every line a `watcher run` process writes is JSON, including what libraries log through `logging` and
what Python would print about exceptions nobody caught (issue 12 item 3: an asyncpg traceback landed as plain
text in the JSON log)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# The same set-up as `watcher run` (configure_logging, then route_process_errors), then each way a library
# or the interpreter reports a problem without going through structlog.
SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, logging, threading, warnings
    from watcher.daemon.logs import configure_logging, route_process_errors

    configure_logging("info", "json")
    route_process_errors()
    try:
        raise ConnectionResetError("connection was closed in the middle of operation")
    except ConnectionResetError:
        logging.getLogger("asyncpg.pool").warning("Failed to restore the pool floor", exc_info=True)
    logging.getLogger("aiohttp.server").error("Error handling request")

    async def fail():
        raise RuntimeError("nobody awaited me")

    async def main():
        asyncio.get_running_loop().create_task(fail())
        await asyncio.sleep(0.05)
        gc.collect()  # the never-retrieved exception is reported when the task is collected
        asyncio.get_running_loop().call_exception_handler({"message": "transport error"})

    asyncio.run(main())
    gc.collect()

    def boom():
        raise ValueError("in a thread")

    t = threading.Thread(target=boom, name="worker")
    t.start()
    t.join()
    warnings.warn("something deprecated", DeprecationWarning, stacklevel=1)
    """
)


def test_library_logs_and_uncaught_exceptions_are_json_lines() -> None:
    """asyncpg's and aiohttp's log records, asyncio's "Task exception was never retrieved" and exception
    handler, an exception in a thread and a warning all come out as JSON objects with an event, a level
    and, where there is one, the traceback as a field; nothing reaches stderr as plain text."""
    command = [sys.executable, "-W", "always", "-c", SCRIPT]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line[:200]!r}") from None
    events = " | ".join(str(r.get("event")) for r in records)
    assert all("event" in r and "level" in r and "timestamp" in r for r in records), records
    pool = next(r for r in records if r.get("logger") == "asyncpg.pool")
    assert pool["level"] == "warning" and "ConnectionResetError" in pool["exception"]
    assert any(r.get("logger") == "aiohttp.server" for r in records), events
    never = next(r for r in records if "never retrieved" in str(r.get("event")))
    assert "nobody awaited me" in never["exception"]
    assert any("transport error" in str(r.get("event")) for r in records), events
    thread = next(r for r in records if r.get("event") == "thread.crashed")
    assert thread["thread"] == "worker" and "in a thread" in thread["exception"]
    assert any("something deprecated" in str(r.get("event")) for r in records), events
