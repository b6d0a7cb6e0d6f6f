"""The protobuf encoders a changing family keeps between scrapes never serve stale bytes.

A family that changes between scrapes keeps an encoder (its children's labels encoded once) and
each native histogram keeps its encoded deltas, patched in place. Here one long-lived exposition
renders, a few things change, it renders again, and each incremental render must equal a render
from scratch (fresh caches on the same state) byte for byte and, decoded by the reader in
tests/test_exposition_incremental.py, must hold the values recorded in the families.
"""

from __future__ import annotations

from typing import Any

import pytest

from probed import exposition
from probed.exposition import Format
from probed.metrics import DaemonMetrics, Exposition, ProbeMetrics
from probed.probes.messages import MessageMetrics
from probed.series import (
    TOUCHED_MAX,
    Counter,
    Family,
    Gauge,
    Histogram,
    HistogramChild,
    native_index,
)
from tests import protobuf_reader as pb
from tests.test_exposition_incremental import _native_buckets, decode

Decoded = dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[int, Any]]]


class Lab:
    """Two probes (one with roles, so its session families hold several series each)."""

    def __init__(self) -> None:
        # No process_* families: CPU seconds move between the two renders being compared.
        self.exposition = Exposition(DaemonMetrics(process=False))
        self.exposition.labels = {"location": "lab"}
        self.plain = ProbeMetrics("plain", kind="echo", target="ws://127.0.0.1:1/")
        self.messages = MessageMetrics(
            self.plain, self.plain.latency("probe_message_rtt_seconds", "Round trip.")
        )
        self.roles = ProbeMetrics(
            "roles", kind="echo", target="ws://127.0.0.1:1/", roles=("caller", "callee")
        )
        for probe in (self.plain, self.roles):
            self.exposition.add(probe)

    @property
    def rtt(self) -> Histogram:
        return self.messages.latency._histogram

    def families(self) -> list[Family]:
        return [f for p in (self.plain, self.roles) for f in p.registry.families]

    def scratch(self, fmt: Format = Format.PROTOBUF) -> bytes:
        """What an exposition with no caches renders now; the long-lived caches are kept."""
        saved = []
        for family in self.families():
            children = family.children() if isinstance(family, Histogram) else []
            saved.append(
                (family, family.rendered, [(h, h.encoded, h.touched) for _, h in children])
            )
            family.rendered = None
            for _, h in children:
                h.encoded = h.touched = None
        other = Exposition(self.exposition._daemon)
        other.labels = self.exposition.labels
        for probe in (self.plain, self.roles):
            other.add(probe)
        body = other.render_format(fmt)
        for family, rendered, kept in saved:
            family.rendered = rendered
            for h, encoded, touched in kept:
                h.encoded, h.touched = encoded, touched
        return body

    def render_and_check(self) -> Decoded:
        body = self.exposition.render_format(Format.PROTOBUF)
        assert body == self.scratch()
        decoded = decode(body)
        self.check_values(decoded)
        return decoded

    def check_values(self, decoded: Decoded) -> None:
        """Every series of every probe family against the numbers the family holds."""
        extra = self.exposition.labels
        for probe in (self.plain, self.roles):
            for family in probe.registry.families:
                assert isinstance(family, Counter | Gauge | Histogram)
                name = f"{family.name}_total" if isinstance(family, Counter) else family.name
                for values, child in family.children():
                    own = {
                        "probe": probe.name,
                        **extra,
                        **dict(zip(family.labelnames, values, strict=True)),
                    }
                    series = decoded[name, tuple(sorted(own.items()))]
                    fields = dict(series)
                    if isinstance(child, HistogramChild):
                        assert fields[1] == child.count
                        assert fields[2] == child.sum
                        classic = [dict(pb.fields(v))[1] for n, v in series if n == 3]
                        assert classic == child.cumulative()[:-1]
                        if child.native is not None:
                            assert _native_buckets(series) == child.native
                            assert fields.get(7, 0) == child.zero
                    else:
                        assert fields[1] == child.value


def encoders_kept(lab: Lab) -> int:
    return sum(f.rendered is not None and f.rendered.encoder is not None for f in lab.families())


def test_incremental_protobuf_equals_a_render_from_scratch() -> None:
    lab = Lab()
    session = lab.roles.session("caller")
    for value in (0.0015, 0.0016, 0.0021, 0.004, 0.5):
        lab.rtt.observe(value)
    lab.render_and_check()
    # Second render: the families that moved become "changing" and keep their encoders.
    lab.messages.sent()
    lab.rtt.observe(0.0015)
    lab.roles.connect_failed("dns", role="caller")
    lab.render_and_check()
    assert encoders_kept(lab) >= 3  # the latency histogram, messages sent, connect errors

    # A few observations: an existing bucket, a new one inside a gap, one far out, the zero bucket.
    lab.rtt.observe(0.0016)
    lab.rtt.observe(0.003)
    lab.rtt.observe(42.0)
    lab.rtt.observe(0.0)
    lab.messages.sent()
    lab.render_and_check()

    # Two neighbouring buckets climbing, one round trip between scrapes (deltas patched in
    # place), then many (re-encoded): a delta grows past one byte (-64..63), then shrinks back.
    low, high = 0.00205, 0.0021
    assert native_index(low) == native_index(high) - 1
    for _ in range(70):
        lab.rtt.observe(high)
        lab.render_and_check()
    for value in [high] * 3 + [low] * 6:
        for _ in range(TOUCHED_MAX - 7):
            lab.rtt.observe(value)
        lab.render_and_check()
    # Several known buckets moved between two scrapes, none of them new.
    for _ in range(3):
        for value in (0.0015, 0.0016, low, 0.004, 0.5):
            lab.rtt.observe(value)
        lab.render_and_check()
    # Far more than observe() lists (the buckets are read whole), deltas past the lookup table
    # and cumulative classic counts past the table of encoded pieces (2^14), then patched again.
    for _ in range(17_000):
        lab.rtt.observe(high)
    lab.render_and_check()
    for _ in range(20):
        lab.rtt.observe(high)
    lab.render_and_check()

    # Labelled families: a counter series moves, a new series comes, one goes.
    lab.roles.connect_failed("tls", role="callee")
    session.connected_ok(phases={"dns": 0.001}, total=0.003, reconnect=None, cert_expiry=None)
    lab.render_and_check()
    close_codes = lab.roles.sessions.close_codes
    close_codes.labels("1006", "caller").inc()
    lab.render_and_check()
    close_codes.labels("1001", "callee").inc(2.5)
    close_codes.remove("1006", "caller")
    lab.render_and_check()
    lab.roles.sessions.connect_duration.labels("callee").observe(0.25)
    lab.render_and_check()

    # New global labels: every encoder is made again for the new label epoch.
    lab.exposition.labels = {"location": "lab-2"}
    lab.rtt.observe(0.0017)
    decoded = lab.render_and_check()
    assert all(dict(labels)["location"] == "lab-2" for _, labels in decoded)


def test_a_stale_cache_would_be_caught() -> None:
    """The comparison above can fail: a change the caches are not told of shows up in it."""
    lab = Lab()
    lab.rtt.observe(0.002)
    lab.messages.sent()
    lab.render_and_check()
    lab.messages.sent()
    lab.rtt.observe(0.002)
    lab.render_and_check()  # the encoders are kept from here on
    sent = next(f for f in lab.plain.registry.families if f.name == "probe_messages_sent")
    assert isinstance(sent, Counter)
    sent.labels().value += 5  # behind the family's back: its version does not move
    stale = lab.exposition.render_format(Format.PROTOBUF)
    assert stale != lab.scratch()
    lab.messages.sent()  # a counted change renders the family again, with both
    lab.render_and_check()


def test_classic_counts_of_any_size_decode_back() -> None:
    """Cumulative counts below 2^14, up to 2^21 and past it (weeks of a busy probe) in one
    histogram: each range has its own encoding path, and each must decode to the count."""
    lab = Lab()
    lab.render_and_check()
    h = lab.rtt.labels()
    for extra in (100, 20_000, 2_500_000, 3):
        # Straight into the counts (observing millions of times would take seconds); the
        # family's version moves as observe() would move it.
        for bucket in range(0, len(h.counts), 3):
            h.counts[bucket] += extra
            h.count += extra
        lab.rtt.version += 1
        decoded = lab.render_and_check()
        labels = tuple(sorted({"probe": "plain", "location": "lab"}.items()))
        cumulative = [
            dict(pb.fields(v))[1] for n, v in decoded["probe_message_rtt_seconds", labels] if n == 3
        ]
        assert cumulative == h.cumulative()[:-1]
    assert h.cumulative()[-2] > 1 << 21


def test_new_buckets_one_round_trip_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """One round trip between scrapes landing in a bucket seen for the first time: its delta is
    inserted into the packed deltas in place while every delta takes one byte, and they are
    packed again once one takes two. Every position: before the first bucket, inside a gap,
    next to a run, joining two runs, past the last."""
    grown: list[int] = []
    real = exposition._NativeState._grow_one

    def counted(state: exposition._NativeState, native: dict[int, int], i: int) -> None:
        grown.append(i)
        real(state, native, i)

    monkeypatch.setattr(exposition._NativeState, "_grow_one", counted)
    lab = Lab()
    base = native_index(0.002)
    at = [2.0 ** ((base + k - 0.5) / 32) for k in range(-12, 13)]  # the middle of bucket k
    for k in (0, 1, 4):
        lab.rtt.observe(at[12 + k])
    lab.render_and_check()
    lab.rtt.observe(at[12])
    lab.render_and_check()  # the encoders are kept from here on
    for k in (2, -3, 6, 3, 5, -12, 12, -2):  # gap, first, past last, join, join, ...
        lab.rtt.observe(at[12 + k])
        lab.render_and_check()
        # Then one round trip in a known bucket above the new one (moved up one place).
        lab.rtt.observe(at[12 + 4])
        lab.render_and_check()
    assert len(grown) == 8
    # A delta of two bytes (a bucket 70 above its neighbour): the packed deltas are no longer
    # one byte each, and a new bucket before and after it packs them again.
    for _ in range(70):
        lab.rtt.observe(at[12 + 6])
    lab.render_and_check()
    for k in (7, -1, 9):
        lab.rtt.observe(at[12 + k])
        lab.render_and_check()
    assert len(grown) == 11
    # The text formats share the layout whose column lengths protobuf keeps: renders in every
    # format equal ones from scratch while one column moves and the others keep their length.
    for fmt in (Format.TEXT, Format.OPENMETRICS, Format.TEXT):
        for k in (0, 11, 0):
            lab.rtt.observe(at[12 + k])
            assert lab.exposition.render_format(fmt) == lab.scratch(fmt)
        lab.messages.sent()
        assert lab.exposition.render_format(fmt) == lab.scratch(fmt)
        lab.render_and_check()


def test_buckets_counted_when_the_state_is_made_are_not_counted_again() -> None:
    """The first round trip of a histogram rendered empty makes its encoded state; a later
    render of the same counts (new global labels lay every family out again) must not take
    that round trip as new."""
    lab = Lab()
    lab.render_and_check()  # empty: no native state yet
    lab.rtt.observe(0.001)
    lab.render_and_check()  # the state is made from the counts
    lab.exposition.labels = {"location": "lab-2"}
    lab.render_and_check()
    lab.rtt.observe(0.001)
    lab.render_and_check()


def test_a_family_moving_first_beside_ones_with_encoders() -> None:
    """Families that kept encoders and one moving for the first time since the layout, in one
    batch: each renders its own way, and none of them is left stale."""
    lab = Lab()
    for _ in range(2):
        lab.rtt.observe(0.002)
        lab.messages.sent()
        lab.render_and_check()  # the latency histogram and messages sent keep their encoders
    lab.rtt.observe(0.003)
    lab.messages.sent()
    lab.plain.tainted_total.inc()  # never moved before
    lab.render_and_check()
    lab.rtt.observe(0.003)
    lab.plain.tainted_total.inc()  # moved once: its encoder is kept now
    lab.plain.connect_failed("dns")  # a new series: this family's encoder is made again
    lab.render_and_check()
    lab.messages.sent()
    lab.plain.connect_failed("dns")
    lab.render_and_check()
