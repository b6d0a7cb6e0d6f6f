"""Real-time pacing on absolute deadlines, as a microphone delivers audio.

Chunk i leaves at t0 + i * interval. Each deadline is computed from t0, never from the previous
send, so a late wake-up does not push every later chunk back (no drift). A chunk that is late
is still sent, at once, followed by any others already due: skipping audio would change what
the provider hears and so the transcript being measured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class Pacer:
    def __init__(
        self,
        interval: float,
        *,
        on_lateness: Callable[[float], None] | None = None,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        if not interval > 0:
            raise ValueError("the pacing interval must be > 0")
        self._interval_ns = round(interval * 1e9)
        self._on_lateness = on_lateness
        self._clock = clock
        self.t0_ns: int | None = None

    @property
    def interval_ns(self) -> int:
        return self._interval_ns

    def deadline(self, index: int) -> int:
        assert self.t0_ns is not None
        return self.t0_ns + index * self._interval_ns

    async def run(
        self,
        count: int,
        send: Callable[[int], Awaitable[None]],
        *,
        stop: Callable[[], bool] = lambda: False,
        t0_ns: int | None = None,
    ) -> list[int]:
        """Send chunks 0..count-1 on schedule; returns when each one had been handed over.

        `stop` is asked before each chunk (e.g. the final transcript is in, no more silence is
        needed). The returned instants are taken after `send` returned: the audio is then in
        the socket's hands, which is where the latency measurement starts.
        """
        self.t0_ns = self._clock() if t0_ns is None else t0_ns
        sent: list[int] = []
        for index in range(count):
            if stop():
                break
            due = self.deadline(index)
            wait = due - self._clock()
            if wait > 0:
                await asyncio.sleep(wait / 1e9)
            await send(index)
            # Lateness is taken once the chunk is in the socket's hands, so that the cost of
            # sending it is part of what is reported (an early wake-up counts as on time).
            now = self._clock()
            sent.append(now)
            if self._on_lateness is not None:
                self._on_lateness(max(0, now - due) / 1e9)
        return sent
