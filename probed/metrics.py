"""Every metric family probed exports, and the recorders that write them.

This is the one place that imports prometheus_client. Probes and the session supervisor talk to a
`ProbeMetrics` recorder with measurement-shaped methods; they never see a metric object.

Each probe gets its own registry so that removing or reconfiguring a probe drops exactly its series
and so that each probe's latency histograms can carry its own SLO threshold as a bucket boundary.
`Exposition` merges the registries at scrape time and adds the `probe` label and the configured
global labels to every series.
"""

from __future__ import annotations

import platform
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from probed import __version__

# `_created` series double the series count and no alert or dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

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
    "shutdown",
)
CONNECT_ERROR_REASONS: Final = (
    "dns",
    "refused",
    "unreachable",
    "reset",
    "tls",
    "timeout",
    "protocol_error",
    "setup",
)
# Every label name a metric of ours carries (plus Prometheus's own le and quantile): a global
# static label with one of these names would clash, so the config refuses them.
RESERVED_LABEL_NAMES: Final = frozenset(
    {"probe", "kind", "target", "adapter", "reason", "code", "phase", "result"}
    | {"version", "python_version", "event_loop", "le", "quantile"}
)
UNMATCHED_REASONS: Final = ("not_json", "missing_field", "late", "unknown")


def latency_buckets(*extra: float) -> tuple[float, ...]:
    """The shared bucket set plus a probe's own SLO thresholds as exact boundaries."""
    return tuple(sorted(set(LATENCY_BUCKETS).union(extra)))


TaintCheck = Callable[[int, int], bool]
"""(start_ns, end_ns) -> True when the event loop lagged during that interval."""


class ProbeMetrics:
    """The metrics of one probe: a registry of its own plus a short memory of recent results."""

    RECENT: Final = 4096

    def __init__(
        self,
        name: str,
        *,
        kind: str,
        target: str,
        adapter: str = "",
        slo_thresholds: Iterable[float] = (),
        tainted: TaintCheck = lambda _start, _end: False,
    ) -> None:
        self.name = name
        self.registry = CollectorRegistry(auto_describe=True)
        self._tainted = tainted
        reg = self.registry
        buckets = latency_buckets(*slo_thresholds)

        Gauge(
            "probe_info",
            "Static facts about the probe; always 1.",
            ["kind", "target", "adapter"],
            registry=reg,
        ).labels(kind, target, adapter).set(1)
        self._success = Gauge(
            "probe_success",
            "1 if the latest cycle met its expectations (session up, latest message answered in"
            " time).",
            registry=reg,
        )
        self._open = Gauge("probe_connections_open", "Sessions currently usable.", registry=reg)
        self._connect_duration = Histogram(
            "probe_connect_duration_seconds",
            "Dial to usable: DNS, TCP, TLS, upgrade and application setup.",
            buckets=buckets,
            registry=reg,
        )
        # Only phases a probe goes through get a series (no tls phase on ws://).
        self._phase = Gauge(
            "probe_connect_phase_seconds",
            "Duration of each phase of the latest connect.",
            ["phase"],
            registry=reg,
        )
        self._connect_errors = Counter(
            "probe_connect_errors_total",
            "Failed connection attempts by reason.",
            ["reason"],
            registry=reg,
        )
        self._disconnects = Counter(
            "probe_disconnects_total",
            "Sessions that ended, by how they ended.",
            ["reason"],
            registry=reg,
        )
        self._close_codes = Counter(
            "probe_close_codes_total",
            "WebSocket close codes as received from the server.",
            ["code"],
            registry=reg,
        )
        self._reconnect = Histogram(
            "probe_reconnect_duration_seconds",
            "Session loss detected to usable again, backoff and application setup included.",
            buckets=buckets,
            registry=reg,
        )
        self._start_ts = Gauge(
            "probe_connection_start_timestamp_seconds",
            "Wall-clock start of the current session.",
            registry=reg,
        )
        self._cert_expiry: Gauge | None = None  # wss:// only: a 0 would read as "expired"
        self._tainted_total = Counter(
            "probe_measurements_tainted_total",
            "Measurements withheld from latency histograms because the event loop lagged.",
            registry=reg,
        )
        for reason in DISCONNECT_REASONS:
            self._disconnects.labels(reason)
        for reason in CONNECT_ERROR_REASONS:
            self._connect_errors.labels(reason)

        # Message families exist only for kinds that send messages; created on first use so a
        # probe never exports families it cannot fill.
        self._buckets = buckets
        self._messages: _MessageFamilies | None = None

        # Recent results and session counts for the demo summary and the soak; never exported.
        self.recent_rtt: deque[float] = deque(maxlen=self.RECENT)
        self.connected = False
        self.connects = 0
        self.disconnects = 0

    # -- session lifecycle -------------------------------------------------------------------

    def connected_ok(
        self,
        *,
        phases: Mapping[str, float],
        total: float,
        reconnect: float | None,
        cert_expiry: float | None,
    ) -> None:
        for name, seconds in phases.items():
            self._phase.labels(name).set(seconds)
        self._connect_duration.observe(total)
        if reconnect is not None:
            self._reconnect.observe(reconnect)
        if cert_expiry is not None:
            if self._cert_expiry is None:
                self._cert_expiry = Gauge(
                    "probe_tls_cert_expiry_timestamp_seconds",
                    "Earliest certificate expiry seen in the server's chain.",
                    registry=self.registry,
                )
            self._cert_expiry.set(cert_expiry)
        self._open.set(1)
        self._start_ts.set(time.time())
        self.connected = True
        self.connects += 1

    def connect_failed(self, reason: str) -> None:
        self._connect_errors.labels(reason).inc()
        self._success.set(0)

    def disconnected(self, reason: str, close_code: int | None) -> None:
        self._disconnects.labels(reason).inc()
        if close_code is not None:
            self._close_codes.labels(str(close_code)).inc()
        self._open.set(0)
        self.connected = False
        self.disconnects += 1
        if reason != "churn":
            self._success.set(0)

    def set_success(self, ok: bool) -> None:
        self._success.set(1 if ok else 0)

    # -- messages ----------------------------------------------------------------------------

    @property
    def messages(self) -> _MessageFamilies:
        if self._messages is None:
            self._messages = _MessageFamilies(self.registry, self._buckets)
        return self._messages

    def message_answered(self, start_ns: int, end_ns: int) -> None:
        rtt = (end_ns - start_ns) / 1e9
        self.messages.received.inc()
        self.recent_rtt.append(rtt)
        if self._tainted(start_ns, end_ns):
            self._tainted_total.inc()
        else:
            self.messages.rtt.observe(rtt)


class _MessageFamilies:
    def __init__(self, reg: CollectorRegistry, buckets: tuple[float, ...]) -> None:
        self.rtt = Histogram(
            "probe_message_rtt_seconds",
            "Round trip of an application message on a held session.",
            buckets=buckets,
            registry=reg,
        )
        self.sent = Counter("probe_messages_sent_total", "Messages sent.", registry=reg)
        self.received = Counter(
            "probe_messages_received_total", "Replies matched to a message in time.", registry=reg
        )
        self.lost = Counter(
            "probe_messages_lost_total",
            "Messages unanswered within the timeout, or in flight when their session died.",
            registry=reg,
        )
        self.duplicated = Counter(
            "probe_messages_duplicated_total", "Replies received more than once.", registry=reg
        )
        self.reordered = Counter(
            "probe_messages_reordered_total",
            "Replies that arrived after a reply to a later message.",
            registry=reg,
        )
        unmatched = Counter(
            "probe_messages_unmatched_total",
            "Inbound messages that matched no message in flight, by reason.",
            ["reason"],
            registry=reg,
        )
        self.unmatched = {r: unmatched.labels(r) for r in UNMATCHED_REASONS}


class DaemonMetrics:
    """The daemon's own health: build, config reloads, event-loop lag, probe crashes."""

    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry(auto_describe=True)
        self._build = Gauge(
            "probed_build_info",
            "Build facts; always 1.",
            ["version", "python_version", "event_loop"],
            registry=reg,
        )
        self.reload_ok = Gauge(
            "probed_config_last_reload_successful",
            "1 if the latest config load succeeded.",
            registry=reg,
        )
        self.reload_ts = Gauge(
            "probed_config_last_reload_success_timestamp_seconds",
            "Wall-clock time of the latest successful config load.",
            registry=reg,
        )
        self.loop_lag = Histogram(
            "probed_event_loop_lag_seconds",
            "How late the event loop woke the lag sampler; high values taint measurements.",
            buckets=LOOP_LAG_BUCKETS,
            registry=reg,
        )
        self.probe_restarts = Counter(
            "probed_probe_restarts_total",
            "Probe tasks that crashed and were restarted by the supervisor.",
            ["probe"],
            registry=reg,
        )
        # process_*: RSS, CPU, open and max descriptors, start time, as every exporter has them.
        ProcessCollector(registry=reg)

    def running_on(self, event_loop: str) -> None:
        self._build.clear()
        self._build.labels(__version__, platform.python_version(), event_loop).set(1)

    def config_loaded(self, ok: bool) -> None:
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_ts.set(time.time())


class Exposition(Collector):
    """Merges the daemon's and every probe's registry into one exposition at scrape time."""

    def __init__(self, daemon: DaemonMetrics) -> None:
        self._daemon = daemon
        self._probes: dict[str, ProbeMetrics] = {}
        self.labels: dict[str, str] = {}

    def add(self, probe: ProbeMetrics) -> None:
        self._probes[probe.name] = probe

    def remove(self, name: str) -> None:
        self._probes.pop(name, None)

    def probes(self) -> list[ProbeMetrics]:
        return list(self._probes.values())

    def collect(self) -> Iterable[Metric]:
        # Snapshot first: a scrape may run in a worker thread while the loop adds probes.
        probes = list(self._probes.values())
        extra = dict(self.labels)
        merged: dict[str, Metric] = {}

        def absorb(families: Iterable[Metric], own: Mapping[str, str]) -> None:
            for family in families:
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                into.samples.extend(
                    s._replace(labels={**own, **s.labels, **extra}) for s in family.samples
                )

        absorb(self._daemon.registry.collect(), {})
        for probe in probes:
            absorb(probe.registry.collect(), {"probe": probe.name})
        return merged.values()
