"""systemd's watchdog and status line, fed from the event loop itself.

The keep-alive is sent by a task on the daemon's event loop, not by a thread: a loop that stalls
(a blocking call, a runaway callback) stops feeding the watchdog, and systemd restarts the
service after WatchdogSec. A thread would keep saying "alive" while every probe was frozen.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import Final

# Between two keep-alives at most half the watchdog timeout passes (sd_watchdog_enabled(3)
# advises this), and a status line is never older than this many seconds.
STATUS_EVERY: Final = 10.0


def watchdog_timeout(environ: Mapping[str, str] = os.environ) -> float | None:
    """The watchdog timeout systemd asked for, in seconds; None when there is none for us."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    # WATCHDOG_PID names the process meant; a child that inherited the variable must stay quiet.
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1e6


def feed_period(timeout: float | None) -> float:
    return STATUS_EVERY if timeout is None else min(STATUS_EVERY, timeout / 2)


async def feed(
    notify: Callable[[str], None],
    status: Callable[[], str],
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Send WATCHDOG=1 (when asked for) and a STATUS= line until cancelled; idle outside systemd."""
    if not environ.get("NOTIFY_SOCKET"):
        return
    timeout = watchdog_timeout(environ)
    period = feed_period(timeout)
    while True:
        lines = [f"STATUS={status()}"]
        if timeout is not None:
            lines.insert(0, "WATCHDOG=1")
        notify("\n".join(lines))
        await asyncio.sleep(period)
