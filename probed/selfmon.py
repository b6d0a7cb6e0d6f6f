"""The probe watches itself: an event-loop lag sampler that decides when a measurement is tainted.

A probe that is starved of CPU (a noisy sidecar neighbour, a GC pause, a blocking call) measures its
own lateness, not the service's. Such measurements are withheld from the latency histograms and
counted as tainted, so a starved probe raises a self-health alert rather than a false SLO page.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

_EPISODES_KEPT = 512


class LagMonitor:
    """Samples how late the loop wakes a sleeping task and remembers the lagging episodes."""

    def __init__(
        self,
        threshold: float,
        *,
        interval: float = 0.05,
        observe: Callable[[float], None] = lambda _lag: None,
    ) -> None:
        self.threshold = threshold
        self.interval = interval
        self._observe = observe
        # (start_ns, end_ns) of each wake-up that came later than the threshold.
        self._episodes: deque[tuple[int, int]] = deque(maxlen=_EPISODES_KEPT)
        self._next_wake_ns: int | None = None

    async def run(self) -> None:
        interval_ns = int(self.interval * 1e9)
        while True:
            expected = time.perf_counter_ns() + interval_ns
            self._next_wake_ns = expected
            await asyncio.sleep(self.interval)
            woke = time.perf_counter_ns()
            lag_ns = max(0, woke - expected)
            self._observe(lag_ns / 1e9)
            if lag_ns > self.threshold * 1e9:
                self._episodes.append((expected, woke))

    def tainted(self, start_ns: int, end_ns: int) -> bool:
        """Whether the loop lagged beyond the threshold at any time in [start_ns, end_ns].

        Also true while the sampler is overdue right now: the stall that delayed this measurement
        may not have been sampled yet, because the sampler waits behind the same stalled loop.
        """
        threshold_ns = self.threshold * 1e9
        if self._next_wake_ns is not None and time.perf_counter_ns() - self._next_wake_ns > (
            threshold_ns
        ):
            return True
        for ep_start, ep_end in reversed(self._episodes):
            if ep_end < start_ns:
                break
            if ep_start <= end_ns:
                return True
        return False
