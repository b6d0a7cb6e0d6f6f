"""CPU work off the event loop that does not stall it through the GIL.

A thread parsing a 1,000-probe config holds the GIL in turns of the interpreter's switch
interval (5 ms), and the loop pays a wait at nearly every hand-back: a reload held the loop for
16-82 ms at a time with its parsing in a thread. While such work runs the interval is 0.5 ms
(loop stalls measured 5-8 ms), then restored.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Final, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

SWITCH_INTERVAL_S: Final = 0.0005


class _Switching:
    """Counts the jobs in threads, so that overlapping ones restore the interval once."""

    def __init__(self) -> None:
        self.jobs = 0
        self.saved = sys.getswitchinterval()

    def enter(self) -> None:
        if self.jobs == 0:
            self.saved = sys.getswitchinterval()
            sys.setswitchinterval(min(self.saved, SWITCH_INTERVAL_S))
        self.jobs += 1

    def leave(self) -> None:
        self.jobs -= 1
        if self.jobs == 0:
            sys.setswitchinterval(self.saved)


_switching = _Switching()


async def in_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`asyncio.to_thread`, with the loop given the GIL back quickly while `fn` runs."""
    _switching.enter()
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    finally:
        _switching.leave()
