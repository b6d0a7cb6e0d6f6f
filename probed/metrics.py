"""Every metric family probed exports, and the recorders that write them.

The session supervisor records through a
`SessionMetrics` (one per session a probe holds); each probe kind declares its own families in its
own module through the factory methods of `ProbeMetrics` (`latency`, `counter`, ...), which give
every latency histogram the probe's SLO thresholds as buckets and keep tainted measurements out.
Recorders also keep the probe's `ProbeStatus` (probed/status.py) current for people to read.

Each probe gets its own registry so that removing or reconfiguring a probe drops exactly its series
and so that each probe's latency histograms can carry its own SLO threshold as a bucket boundary.
Probe families are the lean, self-rendering ones of probed/series.py (a scrape must not stall the
probes); the daemon's own few families stay prometheus_client's. `Exposition`
(probed/exposition.py) merges them at scrape time and adds the `probe` label and the configured
global labels to every series.
"""

from __future__ import annotations

import itertools
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, TypeVar, cast

import prometheus_client as pc

from probed import __version__
from probed.exposition import Exposition
from probed.series import Counter, Gauge, Histogram, Registry
from probed.status import Event, ProbeStatus

__all__ = ["DaemonMetrics", "Exposition", "Latency", "ProbeMetrics", "SessionMetrics"]

# `_created` series double the series count and no alert or dashboard of ours reads them.
pc.disable_created_metrics()  # type: ignore[no-untyped-call]

# Latency buckets shared by every latency histogram. 0.05, 0.2, 0.5 and 1.0 are the product's SLO
# thresholds (message delivery, STT, voice tool call): they must stay exact boundaries so that
# "fraction under the SLO" is a bucket ratio, not an interpolation.
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
)
# How late audio frames leave against their real-time schedule (speech and WebRTC audio alike).
SEND_LAG_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)
LOOP_LAG_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# Bounded label values, pre-created at zero so that rate() and alerts see the series before the
# first event rather than an absent one.
DISCONNECT_REASONS: Final = (
    "server_close",
    "reset",
    "stalled",
    "timeout",
    "protocol_error",
    "go_away",
    "churn",
    "cycle",
    "error",
    "shutdown",
    # We ended it: the peer made the session hold more than its bounds (a ping flood, a peer
    # that stopped reading our writes).
    "flood",
)
# Sessions the probe (or the provider, announcing it) ended on purpose: not a failure.
INTENDED_ENDS: Final = frozenset({"churn", "cycle", "go_away", "shutdown"})
CONNECT_ERROR_REASONS: Final = (
    "dns",
    "refused",
    "unreachable",
    "reset",
    "tls",
    "timeout",
    "protocol_error",
    "setup",
    "proxy",
    # This process ran out of descriptors or buffers (EMFILE, ENFILE): not the target's fault.
    "resources",
)


def latency_buckets(*extra: float) -> tuple[float, ...]:
    """The shared bucket set plus a probe's own SLO thresholds as exact boundaries."""
    return tuple(sorted(set(LATENCY_BUCKETS).union(extra)))


_F = TypeVar("_F")

TaintCheck = Callable[[int, int], bool]
"""(start_ns, end_ns) -> True when the event loop lagged during that interval."""


class Latency:
    """A latency histogram that keeps measurements taken while the loop lagged out of it."""

    def __init__(self, histogram: Histogram, probe: ProbeMetrics, *, primary: bool) -> None:
        self._histogram = histogram
        self._probe = probe
        self._primary = primary

    def observe(self, start_ns: int, end_ns: int) -> bool:
        """Record end - start; False (and counted as tainted) if the loop lagged meanwhile."""
        seconds = (end_ns - start_ns) / 1e9
        if self._primary:
            self._probe.status.recent.append(seconds)
        if self._probe.tainted(start_ns, end_ns):
            self._probe.tainted_total.inc()
            return False
        self._histogram.observe(seconds)
        return True


# Label values that come from the network (close codes, HTTP statuses of refused upgrades): a
# server minting a new one per session would otherwise mint a new series each time.
DISTINCT_NETWORK_VALUES: Final = 16


class _Capped:
    """The first `limit` distinct values as they are; any later one as `overflow`."""

    __slots__ = ("_limit", "_overflow", "_seen")

    def __init__(self, overflow: str, limit: int = DISTINCT_NETWORK_VALUES) -> None:
        self._seen: set[str] = set()
        self._limit = limit
        self._overflow = overflow

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        return self._overflow


class ProbeMetrics:
    """The metrics of one probe: a registry of its own, session recorders and a family factory.

    Session families (connects, disconnects, phases, open sessions) are shared by every session
    the probe holds; a kind with several kinds of session (a publisher and subscribers) names
    them with `roles`, which adds a bounded `role` label. Kind-specific families are declared by
    the kind's own module through `latency`, `counter`, `histogram` and `gauge`.
    """

    def __init__(
        self,
        name: str,
        *,
        kind: str,
        target: str,
        adapter: str = "",
        slo_thresholds: Iterable[float] = (),
        roles: Sequence[str] = (),
        tainted: TaintCheck = lambda _start, _end: False,
    ) -> None:
        self.name = name
        self.registry = Registry()
        self.tainted = tainted
        slo = tuple(slo_thresholds)
        self.status = ProbeStatus(name, kind, target, slo=slo)
        self.buckets = latency_buckets(*slo)
        self.roles = tuple(roles)
        self._families: dict[str, object] = {}
        self.close_code_label = _Capped("other")
        self._http_status_reason = _Capped("http_other")
        role = ["role"] if self.roles else []
        reg = self.registry

        reg.register(
            Gauge(
                "probe_info",
                "Static facts about the probe; always 1.",
                ["kind", "target", "adapter"],
            )
        ).labels(kind, target, adapter).set(1)
        self._success = reg.register(
            Gauge(
                "probe_success",
                "1 if the latest cycle met its expectations"
                " (sessions up, latest measurement in time).",
            )
        )
        # Only phases a probe goes through get a series (no tls phase on ws://).
        self.phase = reg.register(
            Gauge(
                "probe_connect_phase_seconds",
                "Duration of each phase of the latest connect.",
                ["phase", *role],
            )
        )
        self.connect_errors = reg.register(
            Counter(
                "probe_connect_errors_total",
                "Failed connection attempts by reason.",
                ["reason", *role],
            )
        )
        self.cert_expiry: Gauge | None = None  # wss:// only: a 0 would read as "expired"
        # The daemon's count, kept with the probe: one series per probe, rendered (and dropped on
        # removal) with the probe's other families instead of a thousand-sample daemon family.
        self.restarts = reg.register(
            Counter(
                "probed_probe_restarts_total",
                "Probe tasks that crashed and were restarted by the supervisor.",
            )
        )
        self.tainted_total = reg.register(
            Counter(
                "probe_measurements_tainted_total",
                "Measurements withheld from latency histograms because the event loop lagged.",
            )
        )
        for r in self.roles or [None]:
            for reason in CONNECT_ERROR_REASONS:
                self.connect_errors.labels(reason, *([] if r is None else [r]))
        # Created with the first supervised session: a kind that holds none (an HTTP API probe)
        # exports no session families it could never fill.
        self._sessions: _SessionFamilies | None = None

    @property
    def sessions(self) -> _SessionFamilies:
        if self._sessions is None:
            self._sessions = _SessionFamilies(self.registry, self.buckets, self.roles)
        return self._sessions

    def connect_failed(self, reason: str, detail: str = "", role: str | None = None) -> None:
        label = self._http_status_reason(reason) if reason.startswith("http_") else reason
        self.connect_errors.labels(label, *([] if role is None else [role])).inc()
        self.set_success(False)
        self.status.error("connect failed", reason, detail)
        self.status.connect_failed(reason, detail, role or "")

    def session(self, role: str | None = None) -> SessionMetrics:
        """The recorder for one supervised session of this probe."""
        if (role is None) != (not self.roles) or (role is not None and role not in self.roles):
            raise ValueError(f"role {role!r} is not one of {self.roles}")
        return SessionMetrics(self, self.sessions, role)

    def set_success(self, ok: bool) -> None:
        self._success.set(1 if ok else 0)
        self.status.success = ok

    # -- the family factory for kinds ------------------------------------------------------

    # A probe restarted after a crash is built again on the same recorder: asking for a family
    # that exists returns it, counts and all, instead of registering it twice.

    def latency(self, name: str, documentation: str, *, primary: bool = False) -> Latency:
        """A latency histogram with the shared buckets plus this probe's SLO thresholds.

        `primary` marks the latency a person reads first (the demo table, the status page).
        """
        histogram = self._family(
            name,
            lambda: self.registry.register(
                Histogram(name, documentation, buckets=self.buckets, native=True)
            ),
        )
        return Latency(histogram, self, primary=primary)

    def histogram(self, name: str, documentation: str, buckets: Sequence[float]) -> Histogram:
        return self._family(
            name,
            lambda: self.registry.register(Histogram(name, documentation, buckets=buckets)),
        )

    def counter(
        self,
        name: str,
        documentation: str,
        label: str | None = None,
        values: Iterable[str] = (),
    ) -> Counter:
        """A counter, with one bounded label whose values are created at zero up front."""

        def make() -> Counter:
            made = self.registry.register(Counter(name, documentation, [label] if label else []))
            for value in values:
                made.labels(value)
            return made

        return self._family(name, make)

    def gauge(self, name: str, documentation: str, label: str | None = None) -> Gauge:
        """A gauge, optionally with one bounded label (no series until a value is set)."""
        return self._family(
            name,
            lambda: self.registry.register(Gauge(name, documentation, [label] if label else [])),
        )

    def _family(self, name: str, make: Callable[[], _F]) -> _F:
        found = self._families.get(name)
        if found is None:
            found = self._families[name] = make()
        return cast(_F, found)


class _SessionFamilies:
    """The families of supervised sessions, shared by every session of one probe."""

    def __init__(self, reg: Registry, buckets: tuple[float, ...], roles: tuple[str, ...]) -> None:
        role = ["role"] if roles else []
        self.open = reg.register(
            Gauge("probe_connections_open", "Sessions currently usable.", role)
        )
        self.connect_duration = reg.register(
            Histogram(
                "probe_connect_duration_seconds",
                "Dial to usable: DNS, TCP, TLS, upgrade and application setup.",
                role,
                buckets=buckets,
            )
        )
        self.disconnects = reg.register(
            Counter(
                "probe_disconnects_total",
                "Sessions that ended, by how they ended.",
                ["reason", *role],
            )
        )
        self.close_codes = reg.register(
            Counter(
                "probe_close_codes_total",
                "WebSocket close codes as received from the server.",
                ["code", *role],
            )
        )
        self.reconnect = reg.register(
            Histogram(
                "probe_reconnect_duration_seconds",
                "Session loss detected to usable again, backoff and application setup included.",
                role,
                buckets=buckets,
            )
        )
        self.start_ts = reg.register(
            Gauge(
                "probe_connection_start_timestamp_seconds",
                "Wall-clock start of the current session.",
                role,
            )
        )
        for r in roles or [None]:
            extra = [] if r is None else [r]
            if r is not None:
                self.open.labels(r)
            for reason in DISCONNECT_REASONS:
                self.disconnects.labels(reason, *extra)


_SESSION_KEYS = itertools.count(1)


class SessionMetrics:
    """Records one supervised session's life into its probe's shared session families."""

    def __init__(self, probe: ProbeMetrics, families: _SessionFamilies, role: str | None) -> None:
        self._p = probe
        self._f = families
        self._role = [] if role is None else [role]
        self.role = role
        # Names this session's open cycle in the probe's status: several sessions share a role.
        self._key = f"{role or ''}#{next(_SESSION_KEYS)}"
        self.connected = False
        self.connects = 0
        self.disconnects = 0

    def connected_ok(
        self,
        *,
        phases: Mapping[str, float],
        total: float,
        reconnect: float | None,
        cert_expiry: float | None,
    ) -> None:
        p, f, role = self._p, self._f, self._role
        for name, seconds in phases.items():
            p.phase.labels(name, *role).set(seconds)
        f.connect_duration.labels(*role).observe(total)
        if reconnect is not None:
            f.reconnect.labels(*role).observe(reconnect)
            p.status.last_reconnect_s = reconnect
        p.status.session_up(phases, self.role or "", reconnect, key=self._key)
        if cert_expiry is not None:
            if p.cert_expiry is None:
                p.cert_expiry = p.registry.register(
                    Gauge(
                        "probe_tls_cert_expiry_timestamp_seconds",
                        "Earliest certificate expiry seen in the server's chain.",
                    )
                )
            p.cert_expiry.set(cert_expiry)
        f.open.labels(*role).inc()
        now = time.time()
        f.start_ts.labels(*role).set(now)
        p.status.sessions_open += 1
        p.status.session_started = now
        p.status.connects += 1
        self.connected = True
        self.connects += 1

    def connect_failed(self, reason: str, detail: str = "") -> None:
        self._p.connect_failed(reason, detail, self.role)

    def disconnected(self, reason: str, close_code: int | None, close_reason: str = "") -> None:
        p, f, role = self._p, self._f, self._role
        f.disconnects.labels(reason, *role).inc()
        if close_code is not None:
            f.close_codes.labels(p.close_code_label(str(close_code)), *role).inc()
        if self.connected:
            f.open.labels(*role).dec()
            p.status.sessions_open -= 1
        p.status.disconnects[reason] += 1
        detail = f"close {close_code}" if close_code is not None else ""
        if close_reason:
            detail += f" {close_reason!r}"
        p.status.last_close = Event(time.time(), "session ended", reason, detail.strip())
        p.status.session_down(
            reason,
            close_code,
            close_reason,
            failure=reason not in INTENDED_ENDS,
            key=self._key,
        )
        self.connected = False
        self.disconnects += 1
        if reason not in INTENDED_ENDS:
            p.set_success(False)


class DaemonMetrics:
    """The daemon's own health: build, config reloads, event-loop lag (probe crashes: per probe).

    `process=False` leaves out the process_* families, whose values move on their own (tests
    that compare two renders).
    """

    def __init__(self, *, process: bool = True) -> None:
        self.registry = reg = pc.CollectorRegistry(auto_describe=True)
        self._build = pc.Gauge(
            "probed_build_info",
            "Build facts; always 1.",
            ["version", "python_version", "event_loop"],
            registry=reg,
        )
        self.reload_ok = pc.Gauge(
            "probed_config_last_reload_successful",
            "1 if the latest config load succeeded.",
            registry=reg,
        )
        self.reload_ts = pc.Gauge(
            "probed_config_last_reload_success_timestamp_seconds",
            "Wall-clock time of the latest successful config load.",
            registry=reg,
        )
        self.loop_lag = pc.Histogram(
            "probed_event_loop_lag_seconds",
            "How late the event loop woke the lag sampler; high values taint measurements.",
            buckets=LOOP_LAG_BUCKETS,
            registry=reg,
        )
        if process:
            # process_*: RSS, CPU, open and max descriptors, start time, as every exporter has.
            pc.ProcessCollector(registry=reg)

    def running_on(self, event_loop: str) -> None:
        self._build.clear()
        self._build.labels(__version__, platform.python_version(), event_loop).set(1)

    def config_loaded(self, ok: bool) -> None:
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_ts.set(time.time())
