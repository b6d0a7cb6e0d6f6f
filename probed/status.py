"""What a person sees of a probe: one status object per probe, kept up to date by its recorders.

The demo table, the HTTP index and `probed once` read this, never the metric registries. Nothing
here is exported to Prometheus, so it may hold detail (close reasons, error text) that a label
must not; every such string has been through the probe's redaction before it arrives.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Final

RECENT: Final = 100  # recent latencies kept for the p50/p99 a person reads


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to a probe, wall-clock stamped for people."""

    at: float
    what: str
    reason: str
    detail: str = ""


@dataclass
class ProbeStatus:
    name: str
    kind: str
    target: str
    slo: tuple[float, ...] = ()
    sessions_open: int = 0
    session_started: float | None = None  # wall clock, latest session up
    success: bool | None = None
    connects: int = 0
    disconnects: Counter[str] = field(default_factory=Counter)
    last_error: Event | None = None
    last_close: Event | None = None  # how the latest session ended, close code and reason
    last_reconnect_s: float | None = None
    sent: int = 0
    lost: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))
    # Kinds that hold no session (an HTTP API probe) are up while their latest check passed.
    sessionless: bool = False

    @property
    def up(self) -> bool:
        if self.sessionless:
            return self.success is True
        return self.sessions_open > 0

    @property
    def session_age(self) -> float | None:
        if not self.up or self.session_started is None:
            return None
        return time.time() - self.session_started

    def percentiles(self) -> tuple[float, float] | None:
        """(p50, p99) of the recent latencies, or None with fewer than two."""
        if len(self.recent) < 2:
            return None
        cuts = statistics.quantiles(self.recent, n=100, method="inclusive")
        return cuts[49], cuts[98]

    def within_slo(self) -> float | None:
        """Share of the recent latencies within the first SLO threshold."""
        if not self.recent or not self.slo:
            return None
        return sum(value <= self.slo[0] for value in self.recent) / len(self.recent)

    def error(self, what: str, reason: str, detail: str = "") -> None:
        self.last_error = Event(time.time(), what, reason, detail)
