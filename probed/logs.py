"""Structured logs: JSON lines for machines, console rendering on a terminal.

The level is read on every event (not baked into loggers) so a config reload can change it for
loggers that probes bound long ago.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_threshold = _LEVELS["info"]


def set_level(level: str) -> None:
    global _threshold  # noqa: PLW0603 - one process-wide level, changed by reload
    _threshold = _LEVELS[level]


def debug_enabled() -> bool:
    """Whether debug events are written now: per-message debug logs ask first, because a
    dropped event still costs the processor chain (a few microseconds, ten thousand times a
    second at scale)."""
    return _threshold <= _LEVELS["debug"]


def _filter(_logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    if _LEVELS.get(method, 20) < _threshold:
        raise structlog.DropEvent
    return event


def _since(start: float) -> Any:
    def stamp(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
        event["timestamp"] = f"+{(time.perf_counter() - start) * 1e3:.1f}ms"
        return event

    return stamp


def configure(
    level: str = "info",
    *,
    json: bool | None = None,
    stream: TextIO | None = None,
    timeline: bool = False,
) -> None:
    """Set up structlog once per process. json=None picks console rendering on a TTY.

    timeline=True stamps events with the time since now instead of the wall clock, for reading
    one probe cycle as a sequence (`probed once`).
    """
    out = stream or sys.stdout
    set_level(level)
    use_json = not out.isatty() if json is None else json
    # The console renderer formats tracebacks itself; JSON needs them flattened first.
    tail: list[Any] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if use_json
        else [structlog.dev.ConsoleRenderer(colors=out.isatty())]
    )
    structlog.configure(
        processors=[
            _filter,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _since(time.perf_counter())
            if timeline
            else structlog.processors.TimeStamper(fmt="iso", utc=True),
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get(**context: Any) -> FilteringBoundLogger:
    logger: FilteringBoundLogger = structlog.get_logger().bind(**context)
    return logger
