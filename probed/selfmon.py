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
# A stall this small a fraction of what it delayed is below what any latency histogram resolves
# (native histograms are built to 5% relative error): a 2 s go-away-to-resume across a 6 ms stall
# is kept, where an absolute threshold alone would withhold nearly every long measurement on a
# busy host.
RELATIVE_TOLERANCE = 0.01
_MIN_INTERVAL = 0.001
_MAX_INTERVAL = 0.05
# From this many probes the sampler wakes five times per threshold instead of twice. An episode
# reaches back one interval before the late wake-up, so a coarse sampler withholds measurements
# around any wake-up more than half the threshold late: at 1,000 probes, 2.9-6.0% of round trips
# were withheld with a 2.5 ms interval and 0.6-3.2% with 1 ms, in alternating 20 s windows of one
# run. The finer sampler costs about 450 more wake-ups a second (about 1% of a core when idle),
# small beside a large fleet's work and not worth it for a handful of probes.
FINE_FROM_PROBES = 100


class LagMonitor:
    """Samples how late the loop wakes a sleeping task and remembers the lagging episodes.

    The sampler sleeps a fraction of the threshold at a time (half, or a fifth for a large
    fleet), so any stall longer than the threshold delays at least one wake-up by more than the
    threshold less one interval (the stall may have begun up to one interval before the wake-up
    was due). Such a wake-up records an episode reaching back one interval before it was due, so
    the episode covers the whole stall and every measurement that overlaps it is withheld: no
    stall longer than the threshold passes into a histogram unflagged, whether or not the
    threshold is anywhere near the SLO. The one exception is a measurement so long that its
    stalls add up to less than 1% of it (RELATIVE_TOLERANCE).
    """

    def __init__(
        self,
        threshold: float,
        *,
        interval: float | None = None,
        observe: Callable[[float], None] = lambda _lag: None,
    ) -> None:
        self.threshold = threshold
        self._fixed_interval = interval
        self._observe = observe
        # (start_ns, end_ns) of each stall that may have lasted longer than the threshold.
        self._episodes: deque[tuple[int, int]] = deque(maxlen=_EPISODES_KEPT)
        self._next_wake_ns: int | None = None
        # How many probes' measurements this sampler guards (the daemon sets it on each apply).
        self.probes = 0

    @property
    def interval(self) -> float:
        if self._fixed_interval is not None:
            return self._fixed_interval
        # A fraction of the threshold, within what a timer can honour and is worth waking for.
        per_threshold = 5 if self.probes >= FINE_FROM_PROBES else 2
        return min(_MAX_INTERVAL, max(_MIN_INTERVAL, self.threshold / per_threshold))

    async def run(self) -> None:
        while True:
            interval = self.interval
            interval_ns = int(interval * 1e9)
            expected = time.perf_counter_ns() + interval_ns
            self._next_wake_ns = expected
            await asyncio.sleep(interval)
            woke = time.perf_counter_ns()
            lag_ns = max(0, woke - expected)
            self._observe(lag_ns / 1e9)
            if lag_ns > self.threshold * 1e9 - interval_ns:
                self._episodes.append((expected - interval_ns, woke))

    def tainted(self, start_ns: int, end_ns: int) -> bool:
        """Whether the loop may have stalled in [start, end] more than the measurement absorbs.

        What it can absorb is the threshold, or 1% of its own length if that is more. Also true
        while the sampler is overdue right now: the stall that delayed this measurement may not
        have been sampled yet, because the sampler waits behind the same stalled loop.
        """
        threshold_ns = self.threshold * 1e9
        if self._next_wake_ns is not None and time.perf_counter_ns() - self._next_wake_ns > (
            threshold_ns - self.interval * 1e9
        ):
            return True
        tolerance_ns = max(threshold_ns, RELATIVE_TOLERANCE * (end_ns - start_ns))
        stalled_ns = 0
        for ep_start, ep_end in reversed(self._episodes):
            if ep_end < start_ns:
                break
            if ep_start <= end_ns:
                # Every episode is longer than the threshold, so one alone taints a short
                # measurement; a long one is tainted by what its stalls could have added up to.
                stalled_ns += ep_end - ep_start
                if stalled_ns > tolerance_ns:
                    return True
        return False
