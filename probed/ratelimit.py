"""Rate-limiting repeated log lines, so that a flapping target cannot flood the journal.

Metrics count every event; logs only need enough lines to show what happens. A `LogLimiter`
lets a burst of lines per key through in each window, drops the rest, and tells the next line
that gets through how many were dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog

DEFAULT_BURST: Final = 20
DEFAULT_WINDOW: Final = 60.0
# Keys are event names chosen in code, so this only guards against a key built from input.
_MAX_KEYS: Final = 256


@dataclass
class _Window:
    started: float
    emitted: int = 0
    dropped: int = 0


class LogLimiter:
    """At most `burst` lines per key per `window` seconds."""

    def __init__(
        self,
        burst: int = DEFAULT_BURST,
        window: float = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.window = window
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def allow(self, key: str) -> int | None:
        """None: drop this line. Otherwise log it, with the count dropped since the last one."""
        now = self._clock()
        win = self._windows.get(key)
        if win is None or now - win.started >= self.window:
            dropped = win.dropped if win is not None else 0
            if win is None and len(self._windows) >= _MAX_KEYS:
                self._windows.clear()
            win = self._windows[key] = _Window(now, emitted=1)
            return dropped
        if win.emitted >= self.burst:
            win.dropped += 1
            return None
        win.emitted += 1
        return 0


def log_limited(
    limiter: LogLimiter,
    log: structlog.typing.FilteringBoundLogger,
    level: str,
    event: str,
    **fields: Any,
) -> None:
    """Log `event` at `level` unless its key is over the limit; says how many were dropped."""
    dropped = limiter.allow(event)
    if dropped is None:
        return
    if dropped:
        fields["suppressed"] = dropped
    getattr(log, level)(event, **fields)
