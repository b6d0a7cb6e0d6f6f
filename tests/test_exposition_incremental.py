"""Incremental renders equal full ones, byte for byte, whatever happened between two scrapes.

The exposition keeps every family's rendered bytes, a layout of where they sit, and each native
histogram's encoded buckets, and redoes only what moved. Here random sequences of observations,
counter and gauge changes, new series, new and dropped families, probes coming and going and
global label changes run against one long-lived exposition; after each step it renders one
format, and that render must equal what a fresh exposition with no caches at all renders from
the same state. The protobuf renders are also decoded (by a reader written here from
metrics.proto, not by the encoder) and their native buckets checked against the recorded ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probed.exposition import Format
from probed.metrics import DaemonMetrics, Exposition, ProbeMetrics
from probed.probes.messages import MessageMetrics
from probed.series import Histogram
from tests import protobuf_reader as pb

# -- reading the delimited io.prometheus.client.MetricFamily stream (tests/protobuf_reader.py) --


def _native_buckets(histogram: list[tuple[int, Any]]) -> dict[int, int]:
    spans = [dict(pb.fields(v)) for n, v in histogram if n == 12]
    deltas: list[int] = []
    for n, v in histogram:
        if n == 13:  # packed (bytes) or one varint per field
            if isinstance(v, bytes):
                at = 0
                while at < len(v):
                    raw, at = pb.varint(v, at)
                    deltas.append(pb.signed(raw))
            else:
                deltas.append(pb.signed(v))
    buckets: dict[int, int] = {}
    index, count, k = 0, 0, 0
    for span in spans:
        index += pb.signed(span.get(1, 0))
        for _ in range(span.get(2, 0)):
            count += deltas[k]
            k += 1
            buckets[index] = count
            index += 1
    assert k == len(deltas), "more deltas than span lengths"
    return buckets


def decode(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[int, Any]]]:
    """(family name, labels) -> the fields of the Metric's value message."""
    out = {}
    at = 0
    while at < len(body):
        size, at = pb.varint(body, at)
        family = pb.fields(body[at : at + size])
        at += size
        name = next(v for n, v in family if n == 1).decode()
        for n, metric in family:
            if n != 4:
                continue
            fields = pb.fields(metric)
            labels = tuple(
                sorted(
                    (d[1].decode(), d[2].decode())
                    for d in (dict(pb.fields(v)) for k, v in fields if k == 1)
                )
            )
            (value,) = [pb.fields(v) for k, v in fields if k in (2, 3, 5, 7)]
            out[name, labels] = value
    return out


# -- the state the steps act on ----------------------------------------------------------------


@dataclass
class World:
    exposition: Exposition
    probes: list[tuple[ProbeMetrics, MessageMetrics]] = field(default_factory=list)
    made: int = 0

    def add_probe(self) -> None:
        p = ProbeMetrics(
            f"p{self.made}", kind="echo", target="ws://127.0.0.1:1/", slo_thresholds=(0.04,)
        )
        self.made += 1
        m = MessageMetrics(p, p.latency("probe_message_rtt_seconds", "Round trip."))
        self.exposition.add(p)
        self.probes.append((p, m))


def fresh(world: World, fmt: Format) -> bytes:
    """What an exposition without caches renders now, leaving the long-lived one's caches be."""
    saved: list[tuple[Any, ...]] = []
    for p, _ in world.probes:
        for family in p.registry.families:
            children = family.children() if isinstance(family, Histogram) else []
            saved.append(
                (family, family.rendered, [(h, h.encoded, h.touched) for _, h in children])
            )
            family.rendered = None
            for _, h in children:
                h.encoded = h.touched = None
    other = Exposition(world.exposition._daemon)
    other.labels = world.exposition.labels
    for p, _ in world.probes:
        other.add(p)
    body = other.render_format(fmt)
    for family, rendered, children in saved:
        family.rendered = rendered
        for h, encoded, touched in children:
            h.encoded, h.touched = encoded, touched
    return body


# Round trips from sub-microsecond to a minute, zero (the zero bucket) and repeats of one value
# (one bucket climbing); most land in a narrow band, as real ones do.
values = st.one_of(
    # 30 neighbouring buckets, some adjacent, some with a gap: buckets move with neighbours.
    st.sampled_from([0.001 * 1.03**k for k in range(30)]),
    st.floats(min_value=0.0005, max_value=0.005),
    st.floats(min_value=0.0, max_value=60.0),
    st.sampled_from([0.0, 1e-9, 0.04, 0.0123]),
)
step = st.one_of(
    st.tuples(st.just("observe"), st.integers(0, 5), st.lists(values, max_size=40)),
    st.tuples(st.just("message"), st.integers(0, 5), st.integers(0, 3)),
    st.tuples(st.just("connect_error"), st.integers(0, 5), st.sampled_from(["dns", "tls"])),
    st.tuples(st.just("gauge"), st.integers(0, 5), st.sampled_from(["a", "b", "c"])),
    st.tuples(st.just("drop_gauge"), st.integers(0, 5), st.just("")),
    st.tuples(st.just("labels"), st.integers(0, 2), st.just("")),
    st.tuples(st.just("add_probe"), st.just(0), st.just("")),
    st.tuples(st.just("remove_probe"), st.integers(0, 5), st.just("")),
)
# Each step, round trips recorded by one probe, then a render in one of the formats.
steps = st.lists(
    st.tuples(
        step,
        st.tuples(st.integers(0, 5), st.lists(values, max_size=12)),
        st.sampled_from(list(Format)),
    ),
    min_size=3,
    max_size=25,
)


def apply(world: World, action: str, k: int, arg: Any) -> None:
    if action == "add_probe":
        world.add_probe()
        return
    if action == "labels":
        world.exposition.labels = {"location": f"lab-{k}"}
        return
    if not world.probes:
        return
    p, m = world.probes[k % len(world.probes)]
    if action == "observe":
        for value in arg:
            m.latency._histogram.observe(value)
    elif action == "message":
        for _ in range(arg):
            m.sent()
    elif action == "connect_error":
        p.connect_failed(arg)
    elif action == "gauge":
        # A family that comes with the first use (as probe_tls_cert_expiry does) and a series
        # per label value.
        p.gauge("probe_test_level", "A gauge that comes and goes.", "which").labels(arg).inc()
    elif action == "drop_gauge":
        found = [f for f in p.registry.families if f.name == "probe_test_level"]
        if found:
            p.registry.unregister(found[0])
            p._families.pop("probe_test_level")
    elif action == "remove_probe":
        world.exposition.remove(p.name)
        world.probes.remove((p, m))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_incremental_renders_equal_fresh_ones(sequence: list[tuple[Any, Any, Format]]) -> None:
    world = World(Exposition(DaemonMetrics(process=False)))
    world.exposition.labels = {"location": "lab"}
    for _ in range(3):
        world.add_probe()
    for fmt in Format:
        world.exposition.render_format(fmt)  # every cache filled before the changes start
    for (action, k, arg), (probe, rtts), fmt in sequence:
        apply(world, action, k, arg)
        apply(world, "observe", probe, rtts)
        got = world.exposition.render_format(fmt)
        assert got == fresh(world, fmt), (action, fmt)
        if fmt is Format.PROTOBUF:
            check_native(world, got)


def check_native(world: World, body: bytes) -> None:
    decoded = decode(body)
    for p, m in world.probes:
        h = m.latency._histogram.labels()
        labels = tuple(sorted({"probe": p.name, **world.exposition.labels}.items()))
        fields = decoded["probe_message_rtt_seconds", labels]
        assert _native_buckets(fields) == (h.native or {})
        assert dict(fields)[1] == h.count
        assert dict(fields).get(7, 0) == h.zero
        classic = [dict(pb.fields(v))[1] for n, v in fields if n == 3]
        assert classic == h.cumulative()[:-1]


def test_long_gaps_and_large_counts_re_encode_exactly() -> None:
    """More moves between two scrapes than observe() lists, and deltas past the lookup table."""
    world = World(Exposition(DaemonMetrics(process=False)))
    world.add_probe()
    _, m = world.probes[0]
    h = m.latency._histogram
    world.exposition.render_format(Format.PROTOBUF)
    for n in range(1, 200):
        h.observe(0.001 * (1 + n % 50) / 10)
    for _ in range(10_000):  # one bucket far above its neighbours: a delta of 10,000
        h.observe(0.00123)
    h.observe(1e-12)  # the zero bucket
    for step in range(40):
        h.observe(0.5 + step)  # new buckets far out, one per observation
        h.observe(0.001 * (1 + step % 50) / 10)  # and an old one among its neighbours
        body = world.exposition.render_format(Format.PROTOBUF)
        assert body == fresh(world, Format.PROTOBUF)
    check_native(world, body)
    native = h.labels().native
    assert native is not None
    assert max(native.values()) >= 10_000


def test_a_family_without_native_buckets_renders_classic_only() -> None:
    world = World(Exposition(DaemonMetrics(process=False)))
    world.add_probe()
    p, _ = world.probes[0]
    plain = p.histogram("probe_test_seconds", "Classic only.", buckets=(0.1, 1.0))
    plain.observe(0.5)
    body = world.exposition.render_format(Format.PROTOBUF)
    fields = decode(body)["probe_test_seconds", (("probe", p.name),)]
    assert [n for n, _ in fields] == [1, 2, 3, 3]
    assert body == fresh(world, Format.PROTOBUF)


def test_decoder_reads_what_prometheus_would() -> None:
    """The reader above, on a hand-made message: spans with a gap, a negative delta, packed."""

    # Buckets 3 and 4 (counts 2, 5), then 7 (count 1): spans (3, 2) and (2, 1), deltas 2, 3, -4.
    def span(offset: int, length: int) -> bytes:
        return bytes([0x08, (offset << 1) ^ (offset >> 63), 0x10, length])

    message = b"\x62\x04" + span(3, 2) + b"\x62\x04" + span(2, 1) + b"\x6a\x03" + bytes([4, 6, 7])
    assert _native_buckets(pb.fields(message)) == {3: 2, 4: 5, 7: 1}
    assert math.isclose(pb.signed(7), -4)
