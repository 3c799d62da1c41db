"""structlog set-up: JSON lines when stdout is not a TTY, a readable console otherwise.

Every log line about a job carries `job_id` and `workspace` (the callers pass them); secrets are never passed
to a logger in the first place, so there is nothing to scrub here.

Libraries log through the standard `logging` module (asyncpg, aiohttp, and asyncio's "Task exception was
never retrieved" from the loop's exception handler): the root logger renders their records with the same
processors, so they are JSON lines like ours, a traceback included as the `exception` field. A process that
is ours (`watcher run`) also routes the errors Python would print to stderr as plain text (an exception
in a thread, an exception ignored in a finaliser, a warning) through `route_process_errors`.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "json", stream: Any = None) -> None:
    """Configure structlog and the root logger to write `fmt` ("json" or "console") lines to `stream`
    (stdout by default); `[log] format` unset means console on a terminal (`LogConfig.resolved_format`)."""
    out = stream if stream is not None else sys.stdout
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    threshold = _LEVELS.get(level, logging.INFO)
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, stamp],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)
    logging.captureWarnings(True)  # `warnings.warn` goes to the `py.warnings` logger, hence to JSON


def route_process_errors() -> None:
    """Log what Python would print to stderr as plain text: exceptions in threads and unraisable ones.

    Process-wide hooks: only for a process that is ours (`watcher run`), never inside a test runner.
    """
    log = structlog.get_logger("watcher.process")

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else None
        exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
        log.error("thread.crashed", thread=name, exc_info=exc_info)

    def unraisable_hook(args: Any) -> None:
        exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
        log.error(
            "exception.unraisable", message=args.err_msg, object=repr(args.object)[:200], exc_info=exc_info
        )

    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook
