"""What a person sees of a probe: one status object per probe, kept up to date by its recorders.

The demo table, the status page, the JSON API and `probed once` read this, never the metric
registries. Nothing here is exported to Prometheus, so it may hold detail (close reasons, error
text) that a label must not; every such string has been through the probe's redaction before it
arrives. The HTML page escapes all of it: close reasons come from the network.

Besides the live figures, each probe keeps a bounded history of recent cycles (a session from
connect to close, or a failed connect), each with its timeline of steps. Failures are kept longer
than successes, at both levels, so the failure that paged someone is still there when they look:
the way blackbox_exporter's history keeps failed results apart from the rest.
"""

from __future__ import annotations

import statistics
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

RECENT: Final = 100  # recent latencies kept for the p50/p99 a person reads
# A step is about 200 bytes, so all probes' histories together hold at most this many (~40 MB):
# a few hundred probes keep the full history below, ten thousand keep a short one each.
HISTORY_STEPS_BUDGET: Final = 200_000


@dataclass(frozen=True, slots=True)
class HistoryLimits:
    """How much of its recent past each probe keeps; shrunk when there are many probes."""

    ok_cycles: int = 3
    failed_cycles: int = 10
    ok_steps: int = 10  # per cycle: the latest measurements that went well
    failed_steps: int = 20  # per cycle: the latest that did not

    @property
    def steps_per_probe(self) -> int:
        """The most steps one probe can hold (a cycle pins its first and last step)."""
        ok = self.ok_cycles * (self.ok_steps + 2)
        return ok + self.failed_cycles * (self.ok_steps + self.failed_steps + 2)

    @classmethod
    def for_probes(cls, probes: int, budget: int = HISTORY_STEPS_BUDGET) -> HistoryLimits:
        full = cls()
        share = budget / max(1, probes * full.steps_per_probe)
        if share >= 1:
            return full
        # Fewer cycles and fewer steps each, in equal measure; never less than the latest
        # failure with a few steps of its timeline.
        root = share**0.5
        return cls(
            ok_cycles=max(1, int(full.ok_cycles * root)),
            failed_cycles=max(1, int(full.failed_cycles * root)),
            ok_steps=max(2, int(full.ok_steps * root)),
            failed_steps=max(3, int(full.failed_steps * root)),
        )


# Process-wide, as the memory it bounds is: the daemon sets it from its probe count on every
# config load (`set_history_limits`), and histories trim to it as they grow.
@dataclass
class _Current:
    limits: HistoryLimits = field(default_factory=HistoryLimits)


_current = _Current()


def history_limits() -> HistoryLimits:
    return _current.limits


def set_history_limits(limits: HistoryLimits) -> None:
    _current.limits = limits


def _push(kept: list[Any], item: Any, limit: int) -> None:
    # Lists trimmed by hand, not deques: the limit can change at run time, and a deque's
    # smallest block (64 slots) outweighs the few items kept.
    kept.append(item)
    if len(kept) > limit:
        del kept[: len(kept) - limit]


class Recent:
    """The latest `size` values, oldest first, in a flat ring of doubles.

    Eight bytes a value, where a deque of float objects costs about forty: at ten thousand
    probes that is 30 MB of the process.
    """

    __slots__ = ("_next", "_size", "_values")

    def __init__(self, size: int = RECENT) -> None:
        self._size = size
        self._values = array("d")
        self._next = 0  # once full: the oldest value, overwritten next

    def append(self, value: float) -> None:
        if len(self._values) < self._size:
            self._values.append(value)
        else:
            self._values[self._next] = value
            self._next = (self._next + 1) % self._size

    def extend(self, values: Iterable[float]) -> None:
        for value in values:
            self.append(value)

    def clear(self) -> None:
        self._values = array("d")
        self._next = 0

    def latest(self) -> float | None:
        return self._values[self._next - 1] if self._values else None

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[float]:
        values, cut = self._values, self._next
        yield from values[cut:]
        yield from values[:cut]

    def __getitem__(self, index: int) -> float:
        count = len(self._values)
        if not -count <= index < count:
            raise IndexError("recent value index out of range")
        return self._values[(self._next + index) % count]


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to a probe, wall-clock stamped for people."""

    at: float
    what: str
    reason: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "what": self.what, "reason": self.reason, "detail": self.detail}


class Step(NamedTuple):
    """One line of a cycle's timeline.

    A named tuple: made for every message, and a frozen dataclass's __init__ (one
    object.__setattr__ per field) cost several times as much.
    """

    offset_s: float  # since the cycle started (monotonic clock)
    what: str  # connected, sent, reply, lost, unmatched, session ended, connect failed, ...
    ok: bool
    detail: str = ""
    latency_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "offset_s": round(self.offset_s, 6),
            "what": self.what,
            "ok": self.ok,
            "detail": self.detail,
            "latency_s": self.latency_s,
        }


@dataclass
class Cycle:
    """A session from dial to close, or a connect attempt that failed."""

    started: float  # wall clock, for people
    started_mono: float  # time.perf_counter(), for the step offsets
    role: str = ""
    what: str = "session"  # session, connect (a failed attempt) or check (sessionless kinds)
    phases: dict[str, float] = field(default_factory=dict)
    ended: float | None = None
    end_reason: str = ""  # disconnect or connect-error reason
    close_code: int | None = None
    close_reason: str = ""
    failed: bool = False
    measured: int = 0
    failures: int = 0
    _pinned: list[Step] = field(default_factory=list)  # the connect, the end: always kept
    _ok_steps: list[Step] = field(default_factory=list)
    _failed_steps: list[Step] = field(default_factory=list)

    @classmethod
    def begin(cls, role: str = "") -> Cycle:
        return cls(time.time(), time.perf_counter(), role)

    def step(
        self,
        what: str,
        *,
        ok: bool = True,
        detail: str = "",
        latency_s: float | None = None,
        pin: bool = False,
    ) -> None:
        offset = time.perf_counter() - self.started_mono
        step = Step(offset, what, ok, detail, latency_s)
        if pin:
            self._pinned.append(step)
        elif ok:
            _push(self._ok_steps, step, _current.limits.ok_steps)
        else:
            _push(self._failed_steps, step, _current.limits.failed_steps)
            self.failures += 1

    @property
    def steps(self) -> list[Step]:
        """The kept steps in time order (older successes fall out before older failures)."""
        return sorted(
            [*self._pinned, *self._ok_steps, *self._failed_steps], key=lambda s: s.offset_s
        )

    @property
    def ok(self) -> bool:
        return not self.failed and self.failures == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "started": self.started,
            "ended": self.ended,
            "role": self.role or None,
            "ok": self.ok,
            "phases_s": {k: round(v, 6) for k, v in self.phases.items()},
            "end_reason": self.end_reason or None,
            "close_code": self.close_code,
            "close_reason": self.close_reason or None,
            "measured": self.measured,
            "failures": self.failures,
            "steps": [s.as_dict() for s in self.steps],
        }


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
    last_reconnect_at: float | None = None  # wall clock
    sent: int = 0
    lost: int = 0
    recent: Recent = field(default_factory=Recent)
    # Kinds that hold no session (an HTTP API probe) are up while their latest check passed.
    sessionless: bool = False
    checks: int = 0  # sessionless kinds: checks made, and how many failed
    checks_failed: int = 0
    # Open cycles by session key ("" when the probe holds a single session).
    current: dict[str, Cycle] = field(default_factory=dict)
    _ok_cycles: list[Cycle] = field(default_factory=list)
    _failed_cycles: list[Cycle] = field(default_factory=list)

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

    @property
    def state(self) -> str:
        """starting (nothing to say yet), ok, or failing: what the status page shows first.

        Follows probe_success: the latest measurement, connect or session end decides.
        """
        if self.success is False:
            return "failing"
        if self.up or self.success:
            return "ok"
        return "failing" if self.last_error is not None else "starting"

    def percentiles(self) -> tuple[float, float] | None:
        """(p50, p99) of the recent latencies, or None with fewer than two."""
        if len(self.recent) < 2:
            return None
        cuts = statistics.quantiles(list(self.recent), n=100, method="inclusive")
        return cuts[49], cuts[98]

    def within_slo(self) -> float | None:
        """Share of the recent latencies within the first SLO threshold."""
        if not self.recent or not self.slo:
            return None
        return sum(value <= self.slo[0] for value in self.recent) / len(self.recent)

    def error(self, what: str, reason: str, detail: str = "") -> None:
        self.last_error = Event(time.time(), what, reason, detail)

    # -- the history, fed by the recorders in probed/metrics.py ---------------------------------

    def session_up(
        self,
        phases: Mapping[str, float],
        role: str = "",
        reconnect: float | None = None,
        *,
        key: str = "",
    ) -> Cycle:
        """A session is up; `key` tells apart sessions of one probe (several per role)."""
        total = sum(phases.values())
        # The cycle began when the dial did, so the timeline shows the connect taking its time.
        cycle = Cycle(time.time() - total, time.perf_counter() - total, role)
        cycle.phases = dict(phases)
        cycle.step("connected", detail=_phases_text(phases), latency_s=total, pin=True)
        if reconnect is not None:
            self.last_reconnect_at = time.time()
        self.current[key] = cycle
        return cycle

    def connect_failed(self, reason: str, detail: str, role: str = "") -> None:
        cycle = Cycle.begin(role)
        cycle.step(
            "connect failed", ok=False, detail=f"{reason}: {detail}" if detail else reason, pin=True
        )
        cycle.what = "connect"
        cycle.failed = True
        cycle.end_reason = reason
        cycle.ended = cycle.started
        self._keep(cycle)

    def checked(
        self,
        ok: bool,
        what: str,
        detail: str = "",
        *,
        latency_s: float | None = None,
        phases: Mapping[str, float] | None = None,
    ) -> None:
        """One check of a kind that holds no session (an HTTP request): a cycle of its own."""
        self.checks += 1
        self.checks_failed += not ok
        # The check began when the request left, so the timeline shows how long it took.
        took = latency_s or 0.0
        cycle = Cycle(time.time() - took, time.perf_counter() - took)
        cycle.what = "check"
        cycle.phases = dict(phases or {})
        cycle.step(what, ok=ok, detail=detail, latency_s=latency_s, pin=True)
        cycle.measured = int(ok)
        cycle.failed = not ok
        cycle.end_reason = "" if ok else what
        cycle.ended = cycle.started
        self._keep(cycle)

    def session_down(
        self,
        reason: str,
        close_code: int | None,
        close_reason: str,
        *,
        failure: bool,
        key: str = "",
    ) -> None:
        cycle = self.current.pop(key, None)
        if cycle is None:
            return
        detail = "" if close_code is None else f"close {close_code}"
        if close_reason:
            detail += f" {close_reason!r}"
        cycle.step(f"session ended: {reason}", ok=not failure, detail=detail.strip(), pin=True)
        cycle.ended = time.time()
        cycle.end_reason = reason
        cycle.close_code = close_code
        cycle.close_reason = close_reason
        cycle.failed = failure
        self._keep(cycle)

    def measured(self, what: str, latency_s: float | None, detail: str = "") -> None:
        """A measurement that went well, on the probe's open session."""
        for cycle in self._open():
            cycle.measured += 1
            cycle.step(what, latency_s=latency_s, detail=detail)

    def note(self, what: str, detail: str = "") -> None:
        """A step worth showing that is not a measurement (a message sent, say)."""
        for cycle in self._open():
            cycle.step(what, detail=detail)

    def failed(self, what: str, detail: str = "") -> None:
        """A measurement that did not (lost, unmatched, timed out), on the open session."""
        for cycle in self._open():
            cycle.step(what, ok=False, detail=detail)

    def _open(self) -> Iterable[Cycle]:
        # Measurements belong to the session they were taken on; a probe holding sessions in
        # several roles attributes them to the latest one up, which is the one that measured.
        # Called for every message: the common single session is taken without a search.
        current = self.current
        if len(current) == 1:
            return current.values()
        if current:
            return (max(current.values(), key=lambda c: c.started_mono),)
        return ()

    def _keep(self, cycle: Cycle) -> None:
        if cycle.ok:
            _push(self._ok_cycles, cycle, _current.limits.ok_cycles)
        else:
            _push(self._failed_cycles, cycle, _current.limits.failed_cycles)

    def cycles(self) -> list[Cycle]:
        """Open cycles, then finished ones, newest first."""
        finished = sorted(
            [*self._ok_cycles, *self._failed_cycles], key=lambda c: c.started_mono, reverse=True
        )
        live = sorted(self.current.values(), key=lambda c: c.started_mono, reverse=True)
        return [*live, *finished]

    def as_dict(self, *, history: bool = True) -> dict[str, Any]:
        cuts = self.percentiles()
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "target": self.target,
            "state": self.state,
            "up": self.up,
            "success": self.success,
            "sessions_open": self.sessions_open,
            "session_started": self.session_started,
            "session_age_s": self.session_age,
            "slo_s": list(self.slo),
            "p50_s": cuts[0] if cuts else None,
            "p99_s": cuts[1] if cuts else None,
            "within_slo_ratio": self.within_slo(),
            "recent_measurements": len(self.recent),
            "sent": self.sent,
            "lost": self.lost,
            "loss_ratio": self.lost / self.sent if self.sent else None,
            "connects": self.connects,
            "checks": self.checks,
            "checks_failed": self.checks_failed,
            "disconnects": dict(self.disconnects),
            "last_reconnect_s": self.last_reconnect_s,
            "last_reconnect_at": self.last_reconnect_at,
            "last_error": self.last_error.as_dict() if self.last_error else None,
            "last_close": self.last_close.as_dict() if self.last_close else None,
        }
        if history:
            out["cycles"] = [c.as_dict() for c in self.cycles()]
        return out


def _phases_text(phases: Mapping[str, float]) -> str:
    return " ".join(f"{name} {seconds * 1e3:.1f}ms" for name, seconds in phases.items())
