"""Growing the process's descriptor table once, at start, instead of while probes measure.

Linux doubles a process's descriptor table when a new descriptor does not fit (at 1,024, 2,048,
and so on), and in a process with threads it waits for an RCU grace period to free the old
table: the one pipe() that crossed 1,024 descriptors held a 1,000-probe daemon's loop for 7 ms.
A fleet starting up crosses every power of two while it dials, and a running one crosses again
on whichever reconnect or reload happens to open the 1,025th descriptor. Opening one descriptor
high up at start, before any probe runs, grows the table to its final size in one step.
"""

from __future__ import annotations

import fcntl
import os
import resource
from typing import Final

# Descriptors beside the sessions: HTTP clients and server, a reload's pipes, logs, the loop.
SPARE: Final = 128


def reserve(sessions: int) -> int:
    """Grow the table to hold `sessions` sessions and the spare; returns its reach (0: nothing).

    Bounded by the soft descriptor limit, past which the table cannot grow anyway.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = sessions + SPARE
    if soft != resource.RLIM_INFINITY:
        wanted = min(wanted, soft)
    if wanted <= 1024:
        return 0  # the size every process starts with
    try:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        # F_DUPFD takes the lowest free descriptor from there up: it never replaces one in use.
        os.close(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, wanted - 1))
    except OSError:
        return 0
    finally:
        os.close(fd)
    return wanted
