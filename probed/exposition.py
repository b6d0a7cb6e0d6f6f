"""/metrics: the daemon's and every probe's families in one exposition, rendered incrementally.

Three formats, chosen by the scraper's Accept header: the Prometheus text format (0.0.4),
OpenMetrics 1.0, and the delimited protobuf format (`io.prometheus.client.MetricFamily`), the only
one that carries native histograms, which Prometheus asks for when native histograms are enabled.

A scrape must not stall the probes (they share the process): each probe family keeps its rendered
bytes per format and renders again only when its `version` moved or the global labels changed, so
a scrape of 1,000 probes re-renders the few families that changed (the latency histogram and the
message counters) and copies the rest. A layout of where every body sits lets a render find the
families that moved in C rather than visiting 20,000 of them in Python, and a native histogram
re-encodes only the buckets observed since the last scrape. Concurrent scrapers share one render
in flight.
"""

from __future__ import annotations

import asyncio
import enum
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from itertools import accumulate, chain, compress, repeat
from operator import add, and_, attrgetter, call, ne, rshift, sub
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest as text_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector

from probed import protobuf as pb
from probed.series import (
    NATIVE_SCHEMA,
    NATIVE_ZERO_THRESHOLD,
    Counter,
    CounterChild,
    Family,
    Gauge,
    GaugeChild,
    Histogram,
    HistogramChild,
    Labels,
    escape_label_value,
    format_value,
)

if TYPE_CHECKING:
    from probed.metrics import DaemonMetrics, ProbeMetrics


class Format(enum.IntEnum):
    TEXT = 0
    OPENMETRICS = 1
    PROTOBUF = 2


CONTENT_TYPES: Final = {
    Format.TEXT: "text/plain; version=0.0.4; charset=utf-8",
    Format.OPENMETRICS: "application/openmetrics-text; version=1.0.0; charset=utf-8",
    Format.PROTOBUF: "application/vnd.google.protobuf; "
    "proto=io.prometheus.client.MetricFamily; encoding=delimited",
}
# metrics.proto MetricType
_PB_TYPES: Final = {"counter": 0, "gauge": 1, "histogram": 4}
_PB_UNTYPED: Final = 3


def negotiate(accept: str) -> Format:
    """The format a scraper prefers among those we speak (highest q, then first listed)."""
    best, best_q = Format.TEXT, -1.0
    for media_range in accept.split(","):
        parts = [p.strip() for p in media_range.split(";")]
        mime = parts[0].lower()
        params = dict(p.partition("=")[::2] for p in parts[1:])
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if mime == "application/vnd.google.protobuf":
            if (
                params.get("proto") != "io.prometheus.client.MetricFamily"
                or params.get("encoding") != "delimited"
            ):
                continue
            fmt = Format.PROTOBUF
        elif mime == "application/openmetrics-text":
            fmt = Format.OPENMETRICS
        elif mime in ("text/plain", "*/*", "text/*"):
            fmt = Format.TEXT
        else:
            continue
        if q > best_q:
            best, best_q = fmt, q
    return best


class _Context:
    """What every series of one probe carries besides its own labels: probe and global labels."""

    def __init__(self, probe: str, extra: Mapping[str, str], epoch: int) -> None:
        self.epoch = epoch
        self.pb_pairs = [("probe", probe), *extra.items()]


def _help_text(doc: str) -> str:
    return doc.replace("\\", "\\\\").replace("\n", "\\n")


def _label_pairs(pairs: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(
        pb.bytes_field(1, pb.string_field(1, k) + pb.string_field(2, v)) for k, v in pairs
    )


class _Entry:
    __slots__ = ("body", "epoch", "version")

    def __init__(self) -> None:
        self.version = -1
        self.epoch = -1
        self.body = b""


class _FamilyCache:
    """A family's rendered series per format, valid for one (version, label epoch)."""

    __slots__ = ("changing", "encoder", "entries", "prefixes", "template")

    def __init__(self) -> None:
        self.template: list[bytes] | None = None  # protobuf, histograms: see _bucket_template
        # protobuf, a family seen changing: (label epoch, family.shape, its encoder).
        self.encoder: tuple[int, int, Callable[[], bytes]] | None = None
        # Per body format (text and OpenMetrics share their series lines): the rendered bytes
        # and the (version, epoch) they render. Updated in place, not replaced, so that a scrape
        # leaves no new long-lived objects behind for the collector's full passes to walk.
        self.entries: list[_Entry | None] = [None, None]
        # epoch -> per child: text line prefixes (histograms: one per bucket).
        # Kept only for families seen changing between renders (the latency histogram, message
        # counters): most families never change after their first render, and their prefixes
        # would cost more memory than the rendered bytes themselves.
        self.prefixes: tuple[int, dict[Labels, list[str]]] = (-1, {})
        self.changing = False


def _cache(family: Family) -> _FamilyCache:
    found: _FamilyCache | None = family.rendered
    if found is None:
        found = family.rendered = _FamilyCache()
    return found


def _own_labels(family: Family, labels: Labels, ctx: _Context) -> list[tuple[str, str]]:
    """A series' labels: its probe's, the global ones and its own, sorted by name as
    prometheus_client writes them (people and tests read them so)."""
    return sorted([*ctx.pb_pairs, *zip(family.labelnames, labels, strict=True)])


def _prefixes(family: Family, labels: Labels, ctx: _Context, cache: _FamilyCache) -> list[str]:
    """A series' text line prefixes (histograms: one per bucket, then count and sum)."""
    epoch, table = cache.prefixes
    if epoch != ctx.epoch:
        table = {}
        cache.prefixes = (ctx.epoch, table)
    found = table.get(labels)
    if found is not None:
        return found
    own = _own_labels(family, labels, ctx)

    def braces(pairs: list[tuple[str, str]]) -> str:
        inner = ",".join(f'{n}="{escape_label_value(v)}"' for n, v in sorted(pairs))
        return f"{{{inner}}}" if inner else ""

    base = braces(own)
    if isinstance(family, Histogram):
        les = [format_value(b) for b in family.bounds] + ["+Inf"]
        lines = [f"{family.name}_bucket{braces([*own, ('le', le)])} " for le in les]
        lines += [f"{family.name}_count{base} ", f"{family.name}_sum{base} "]
    elif isinstance(family, Counter):
        lines = [f"{family.name}_total{base} "]
    else:
        lines = [f"{family.name}{base} "]
    if cache.changing:
        table[labels] = lines
    return lines


def _render_text(family: Family, ctx: _Context, cache: _FamilyCache) -> bytes:
    out: list[str] = []
    if isinstance(family, Histogram):
        for labels, h in family.children():
            lines = _prefixes(family, labels, ctx, cache)
            out.extend(map(str.__add__, lines, map(str, h.cumulative())))
            out.append(lines[-2] + str(h.count))
            out.append(lines[-1] + format_value(h.sum))
    elif isinstance(family, Counter | Gauge):
        for labels, child in family.children():
            lines = _prefixes(family, labels, ctx, cache)
            out.append(lines[0] + format_value(child.value))
    return ("\n".join(out) + "\n").encode() if out else b""


# Fields every native histogram carries the same: schema and zero threshold.
_NATIVE_HEAD: Final = pb.sint_field(5, NATIVE_SCHEMA) + pb.double_field(6, NATIVE_ZERO_THRESHOLD)
# A no-op span marks the histogram native while it has no observations yet.
_NO_SPANS: Final = pb.bytes_field(12, pb.sint_field(1, 0) + pb.uint_field(2, 0))
_SPAN_KEY: Final = pb.key(12, pb.LENGTH_DELIMITED)
_SPAN_OFFSET_KEY: Final = pb.key(1, pb.VARINT)
_SPAN_LENGTH_KEY: Final = pb.key(2, pb.VARINT)
_DELTAS_KEY: Final = pb.key(13, pb.LENGTH_DELIMITED)
# Deltas between neighbouring bucket counts, zigzag-encoded, for the common small ones.
_DELTA_LIMIT: Final = 1 << 12
_DELTAS: Final = {d: pb.varint(pb.zigzag(d)) for d in range(-_DELTA_LIMIT, _DELTA_LIMIT)}
# Up to this many round trips since the last scrape, their deltas are patched in place; past
# it, re-encoding them and joining all the deltas again costs less.
_IN_PLACE_MAX: Final = 1


# One-byte zigzag varints (deltas -64..63): the byte of delta + 1 and of delta - 1 (0x80: it
# would take two bytes), and the delta's encoding, by byte.
_ZIGZAG_UP: Final = [
    pb.zigzag(pb.unzigzag(b) + 1) if b < 0x80 and pb.unzigzag(b) < 63 else 0x80 for b in range(256)
]
_ZIGZAG_DOWN: Final = [
    pb.zigzag(pb.unzigzag(b) - 1) if b < 0x80 and pb.unzigzag(b) > -64 else 0x80 for b in range(256)
]
_ONE_BYTE: Final = [_DELTAS[pb.unzigzag(b)] for b in range(0x80)]


def _delta(d: int) -> bytes:
    found = _DELTAS.get(d)
    return found if found is not None else pb.varint(pb.zigzag(d))


@lru_cache(maxsize=4096)  # a few dozen distinct spans cover a thousand latency histograms
def _span(offset: int, length: int) -> bytes:
    body = _SPAN_OFFSET_KEY + pb.varint(pb.zigzag(offset)) + _SPAN_LENGTH_KEY + pb.varint(length)
    return _SPAN_KEY + pb.varint(len(body)) + body


def _runs(indexes: list[int]) -> tuple[list[int], list[int]]:
    """The first index and the length of each run of consecutive indexes."""
    gaps = map(sub, indexes[1:], indexes)
    # Where a run starts (after the first): each index more than 1 past its predecessor.
    starts = list(compress(range(1, len(indexes)), map(ne, gaps, repeat(1))))
    lengths = list(map(sub, [*starts, len(indexes)], [0, *starts]))
    return [indexes[0], *map(indexes.__getitem__, starts)], lengths


def _positions(indexes: list[int]) -> array[int]:
    """Each index's place in the sorted `indexes`, at [index - indexes[0]] (-1: no such bucket)."""
    base = indexes[0]
    table = array("h", [-1]) * (indexes[-1] - base + 1)
    for p, i in enumerate(indexes):
        table[i - base] = p
    return table


class _NativeState:
    """A child's native buckets as last encoded: what changes between scrapes is re-encoded only.

    Between two scrapes a probe records a few round trips, which move a few of its 100-odd
    buckets: the delta of a moved bucket and of the one after it are encoded again, and a bucket
    seen for the first time changes the run (positive_span) it joins and the offset of the run
    after it; the rest is kept. The packed deltas are kept joined, with where each one starts: a
    delta re-encoded to as many bytes as before (nearly all of them: small deltas take one byte)
    is written over the old one in place, instead of joining 200 deltas again.
    """

    __slots__ = (
        "deltas",
        "firsts",
        "indexes",
        "lead",
        "lengths",
        "offsets",
        "packed",
        "positions",
        "spans",
        "stale",
        "zero",
    )

    def __init__(self, native: dict[int, int], zero: int) -> None:
        self.indexes = sorted(native)
        counts = list(map(native.__getitem__, self.indexes))
        self.deltas = [_delta(d) for d in map(sub, counts, chain((0,), counts))]
        # True: `bump` moved deltas in `packed` alone, every one of them one byte, and
        # `deltas` is to be read back from it before anything else uses it.
        self.stale = False
        # Runs of consecutive buckets: each one's first index and length, and its encoded span
        # (offset from the end of the run before; the first run's from index 0).
        self.firsts, self.lengths = _runs(self.indexes)
        ends = map(add, self.firsts, self.lengths)
        offsets = [self.firsts[0], *map(sub, self.firsts[1:], ends)]
        self.spans = list(map(_span, offsets, self.lengths))
        self.zero = zero
        # Every field before the packed deltas' length: schema, zero bucket, spans, their key.
        self.lead = b""
        self.packed = bytearray()
        self.offsets: list[int] | None = None
        # Each bucket index's place in `indexes`, at `positions[index - indexes[0]]` (None: to
        # be made again, after buckets were added): one lookup where bisecting 150 indexes
        # touched 8 int objects spread over the heap. An array of shorts, not a dict: 0.4 KB a
        # histogram instead of 4.7 KB. Made here, so that the first scrape after a layout does
        # not make 1,000.
        self.positions: array[int] | None = _positions(self.indexes)
        self._pack()
        self._lead()

    def parts(self, zero: int) -> tuple[bytes, bytes, bytearray]:
        """The native fields, in three parts (joined into the message by the caller)."""
        if zero != self.zero:
            self.zero = zero
            self._lead()
        return self.lead, pb.varint(len(self.packed)), self.packed

    def update(self, native: dict[int, int], touched: list[int]) -> None:
        indexes = self.indexes
        if len(indexes) != len(native):  # buckets that were empty until now
            if len(touched) == 1 and len(native) == len(indexes) + 1:
                self._grow_one(native, touched[0])
            else:
                self._grow(native, touched)
        elif len(touched) <= _IN_PLACE_MAX:
            self._patch(native, touched)
        else:
            self._recount(native, touched)
            self._pack()

    def bump(self, native: dict[int, int], touched: list[int]) -> None:
        """Round trips since the last scrape, each in a bucket that had one already (the steady
        state of a daemon scraped every few seconds): each one's bucket delta is one more and
        the next one's one less.

        While every delta takes one byte (a daemon's first hours, and most of them after), each
        is moved in the packed bytes themselves, through a table: neither the counts, the
        indexes nor the lists of deltas are read. At 1,000 histograms their objects are spread
        over the heap, and each read was a cache miss.
        """
        positions = self.positions
        if positions is None:
            positions = self.positions = _positions(self.indexes)
        packed = self.packed
        if len(packed) == len(self.indexes):
            last = len(packed) - 1
            base = self.indexes[0]
            for i in touched:
                p = positions[i - base]
                up = _ZIGZAG_UP[packed[p]]
                down = _ZIGZAG_DOWN[packed[p + 1]] if p < last else 0
                if up >= 0x80 or down >= 0x80:  # a delta leaves one byte: read them all
                    self.stale = True  # read back, then every touched delta from the counts
                    self._recount(native, touched)
                    self._pack()
                    return
                packed[p] = up
                if p < last:
                    packed[p + 1] = down
            self.stale = True
        elif len(touched) <= _IN_PLACE_MAX:
            self._patch(native, touched)
        else:
            self._recount(native, touched)
            self._pack()

    def _unstale(self) -> None:
        if self.stale:
            self.deltas = list(map(_ONE_BYTE.__getitem__, self.packed))
            self.stale = False

    def _patch(self, native: dict[int, int], touched: list[int]) -> None:
        """Only counts moved, in a bucket or two (the steady state at one round trip between
        scrapes): each one's delta and the next one's, written over the old ones in place."""
        self._unstale()
        indexes, deltas, packed, get = self.indexes, self.deltas, self.packed, _DELTAS.get
        offsets = self.offsets
        if offsets is None and len(packed) != len(deltas):
            # Some delta takes two bytes or more: where each one starts. (While every delta
            # takes one byte, as in a daemon's first hours, delta q starts at byte q.)
            offsets = self.offsets = [0, *accumulate(map(len, deltas))]
        after = len(indexes) - 1
        resized = False
        for i in touched:  # repeats are harmless: the same deltas are encoded again
            p = bisect_left(indexes, i)
            for q in (p, p + 1) if p < after else (p,):
                d = native[indexes[q]] - native[indexes[q - 1]] if q else native[indexes[q]]
                new = get(d) or pb.varint(pb.zigzag(d))
                old = deltas[q]
                if new is not old:
                    deltas[q] = new
                    if len(new) == len(old):
                        at = q if offsets is None else offsets[q]
                        packed[at : at + len(new)] = new
                    else:
                        resized = True
        if resized:
            self._pack()

    def _recount(self, native: dict[int, int], moved: Iterable[int]) -> None:
        """Re-encodes the deltas of the buckets that moved and of the bucket after each (a
        bucket's delta is from the one before it); the caller packs them."""
        self._unstale()
        indexes, deltas, get = self.indexes, self.deltas, _DELTAS.get
        at = set(map(bisect_left, repeat(indexes), moved))
        at.update(map(add, list(at), repeat(1)))
        at.discard(len(indexes))
        for p in at:
            d = native[indexes[p]] - native[indexes[p - 1]] if p else native[indexes[p]]
            deltas[p] = get(d) or pb.varint(pb.zigzag(d))

    def _grow_one(self, native: dict[int, int], i: int) -> None:
        """Bucket `i` seen for the first time and nothing else moved (one round trip since the
        last scrape, in a latency's long tail; with more, the generic `_grow` runs). Its
        one-byte delta is inserted into the packed deltas in place, and the next bucket's
        rewritten, instead of packing them all again."""
        self._unstale()
        indexes, deltas, packed = self.indexes, self.deltas, self.packed
        p = bisect_left(indexes, i)
        if p < len(indexes) and indexes[p] == i:  # not new after all: read them all
            self._grow(native, [i])
            return
        narrow = len(packed) == len(deltas)  # every delta one byte: delta q at byte q
        indexes.insert(p, i)
        # The buckets from i on moved up one place; below the first or past the last, the
        # table no longer covers every index, and is made again when next needed.
        positions = self.positions
        if positions is not None and 0 < p < len(indexes) - 1:
            base = indexes[0]
            for q in range(p, len(indexes)):
                positions[indexes[q] - base] = q
        else:
            self.positions = None
        self._join_run(i)
        new = _delta(native[i] - native[indexes[p - 1]] if p else native[i])
        deltas.insert(p, new)
        resized = not narrow or len(new) != 1
        if p + 1 < len(indexes):
            after = _delta(native[indexes[p + 1]] - native[i])
            resized = resized or len(after) != len(deltas[p + 1])
            deltas[p + 1] = after
        if resized:
            self._pack()
        else:
            packed[p:p] = new
            if p + 1 < len(indexes):
                packed[p + 1 : p + 2] = deltas[p + 1]
        self._lead()

    def _grow(self, native: dict[int, int], touched: list[int]) -> None:
        self._unstale()
        moved = set(touched)
        indexes, deltas = self.indexes, self.deltas
        for i in sorted(moved):
            p = bisect_left(indexes, i)
            if p == len(indexes) or indexes[p] != i:
                indexes.insert(p, i)
                self.positions = None
                deltas.insert(p, b"")  # encoded below with the other moved ones
                self._join_run(i)
        self._recount(native, moved)
        self._pack()
        self._lead()

    def _join_run(self, i: int) -> None:
        """Adds bucket `i` (not in any run) to the runs, and re-encodes the spans it moved."""
        firsts, lengths, spans = self.firsts, self.lengths, self.spans
        r = bisect_right(firsts, i) - 1  # the last run starting below i, if any
        if r >= 0 and firsts[r] + lengths[r] == i:  # just after run r
            lengths[r] += 1
            if r + 1 < len(firsts) and firsts[r + 1] == i + 1:  # and just before the next
                lengths[r] += lengths.pop(r + 1)
                del firsts[r + 1], spans[r + 1]
            at = r
        elif r + 1 < len(firsts) and firsts[r + 1] == i + 1:  # just before the next run
            firsts[r + 1] = i
            lengths[r + 1] += 1
            at = r + 1
        else:  # a run of its own
            at = r + 1
            firsts.insert(at, i)
            lengths.insert(at, 1)
            spans.insert(at, b"")
        # The run changed and the one after it (its offset is from the end of this one).
        for k in (at, at + 1):
            if k < len(firsts):
                offset = firsts[k] - firsts[k - 1] - lengths[k - 1] if k else firsts[0]
                spans[k] = _span(offset, lengths[k])

    def _pack(self) -> None:
        self._unstale()
        self.packed = bytearray(b"".join(self.deltas))
        # Where each delta starts: found again only when a patch needs it.
        self.offsets = None

    def _lead(self) -> None:
        # positive_delta, packed: one key and length for the lot (parsers accept packed or not).
        zero = pb.uint_field(7, self.zero)
        self.lead = b"".join((_NATIVE_HEAD, zero, *self.spans, _DELTAS_KEY))


def _native_parts(h: HistogramChild) -> tuple[bytes, bytes, bytes | bytearray]:
    """The child's native histogram fields in three parts, re-encoding what moved."""
    native = h.native
    assert native is not None
    touched = h.touched
    if touched is None:
        h.touched = []  # from now on observe() lists what it moves
    if not native:
        return _NATIVE_HEAD + pb.uint_field(7, h.zero) + _NO_SPANS, b"", b""
    state: _NativeState | None = h.encoded
    if state is None or touched is None:
        state = h.encoded = _NativeState(native, h.zero)
        if touched:  # counted in the new state already: `bump` must not add them again
            touched.clear()
    elif touched:
        state.update(native, touched)
        # The same list again: a scrape leaves no new objects for the collector to walk.
        touched.clear()
    return state.parts(h.zero)


def _bucket_template(family: Histogram, cache: _FamilyCache) -> list[bytes]:
    """A histogram's classic buckets as parts, each bucket's upper bound in place.

    [bucket 1 head and count, bucket 1 upper bound, bucket 2 head and count, ...]: the
    upper_bound field of each classic bucket never changes, so it is encoded once per family; a
    render fills in the counts (one slice assignment, in C) and joins the lot.
    """
    if cache.template is None:
        cache.template = _shared_template(family.bounds)
    return cache.template


@lru_cache(maxsize=256)
def _shared_template(bounds: tuple[float, ...]) -> list[bytes]:
    # One list for every histogram with these bounds (1,000 latency histograms share a few):
    # filled and joined by each render in one step, and it stays in the CPU's cache between.
    template = [b""] * (2 * len(bounds))
    template[1::2] = [pb.double_field(2, b) for b in bounds]
    return template


# Bucket {cumulative_count = 1, upper_bound = 2}: its key and length, and the count's key, by the
# length of the count's varint (the upper bound is a 9-byte double).
_BUCKET_HEADS: Final = [
    pb.key(3, pb.LENGTH_DELIMITED) + pb.varint(n + 10) + pb.key(1, pb.VARINT) for n in range(11)
]


def _bucket_piece(count: int) -> bytes:
    """A classic bucket's head and cumulative count (its upper bound follows)."""
    encoded = pb.varint(count)
    return _BUCKET_HEADS[len(encoded)] + encoded


# _bucket_piece(n) at n, for the counts seen so far below 2^14: grown as counts grow, so that no
# render step builds more than a few milliseconds of it and a daemon keeps only what it uses.
_PIECES: Final[list[bytes]] = []
_SMALL: Final = 1 << 14
_LARGE: Final = 1 << 21


@cache
def _large_pieces() -> tuple[list[bytes], list[bytes]]:
    """For counts in [2^14, 2^21) (a histogram that ran for hours), whose varint takes three
    bytes: the bucket head and the first two bytes by n mod 2^14, the third byte by n >> 14."""
    low = [_BUCKET_HEADS[3] + bytes((x & 0x7F | 0x80, x >> 7 | 0x80)) for x in range(_SMALL)]
    return low, [bytes((h,)) for h in range(_LARGE // _SMALL)]


def _classic_pieces(cumulative: list[int]) -> list[bytes]:
    """_bucket_piece() of each cumulative count, looked up in C, not encoded one by one."""
    top = cumulative[-1] if cumulative else 0  # counts only go up the buckets
    if top >= len(_PIECES) and len(_PIECES) < _SMALL:
        _PIECES.extend(map(_bucket_piece, range(len(_PIECES), min(top + 1, _SMALL))))
    if top < _SMALL:
        return list(map(_PIECES.__getitem__, cumulative))
    if top >= _LARGE:
        return list(map(_bucket_piece, cumulative))
    split = bisect_left(cumulative, _SMALL)
    large = cumulative[split:]
    low, high = _large_pieces()
    return [
        *map(_PIECES.__getitem__, cumulative[:split]),
        *map(
            add,
            map(low.__getitem__, map(and_, large, repeat(_SMALL - 1))),
            map(high.__getitem__, map(rshift, large, repeat(14))),
        ),
    ]


def _histogram_series(head: bytes, h: HistogramChild, template: list[bytes]) -> Encoder:
    """What encodes one histogram series, its Metric field whole, at every scrape.

    One closure per series and no calls below it but the table lookups: at 1,000 probes this
    runs 1,000 times a scrape, and the calls and parts lists of a layered encoder were half of
    its cost. The message's length rarely changes between scrapes, so its two length varints
    are kept with the length they encode.
    """
    varint, pack, counts, pieces_at = pb.varint, pb.pack_double, h.counts, slice(0, None, 2)
    small, piece = pb.SMALL_VARINTS, _PIECES.__getitem__
    native = h.native is not None
    # [message length, its varint, the Metric's length varint] as last encoded.
    sizes: list[int | bytes] = [-1, b"", b""]

    def encode() -> bytes:
        cumulative = list(accumulate(counts))
        count = cumulative.pop()  # +Inf: the message's sample_count
        if count < len(_PIECES):  # every count's piece is in the table: no call
            template[pieces_at] = map(piece, cumulative)
        else:
            template[pieces_at] = _classic_pieces(cumulative)
        classic = b"".join(template)
        count = h.count
        encoded = small[count] if count < _SMALL else varint(count)
        count_sum = b"".join((_COUNT_KEY, encoded, _SUM_KEY, pack(h.sum)))
        if native:
            state: _NativeState | None = h.encoded
            touched, buckets = h.touched, h.native
            packed: bytes | bytearray
            if (
                state is not None
                and touched
                and buckets is not None
                and len(state.indexes) == len(buckets)
                and h.zero == state.zero
            ):
                state.bump(buckets, touched)
                touched.clear()
                lead, packed = state.lead, state.packed
                packed_size = small[len(packed)] if len(packed) < _SMALL else varint(len(packed))
            else:
                lead, packed_size, packed = _native_parts(h)
            length = len(count_sum) + len(classic) + len(lead) + len(packed_size) + len(packed)
        else:
            lead = packed_size = packed = b""
            length = len(count_sum) + len(classic)
        if length != sizes[0]:
            size = varint(length)
            sizes[:] = length, size, varint(len(head) + len(size) + length)
        return b"".join(
            (_METRIC_KEY, sizes[2], head, sizes[1], count_sum, classic, lead, packed_size, packed)  # type: ignore[arg-type]
        )

    return encode


_COUNT_KEY: Final = pb.key(1, pb.VARINT)
_SUM_KEY: Final = pb.key(2, pb.FIXED64)
_METRIC_KEY: Final = pb.key(4, pb.LENGTH_DELIMITED)
_HISTOGRAM_KEY: Final = pb.key(7, pb.LENGTH_DELIMITED)
# Metric.counter / Metric.gauge {value = 1}: key, length (a 9-byte double), the value's key.
_VALUE_HEADS: Final = {
    field: pb.key(field, pb.LENGTH_DELIMITED) + pb.varint(9) + pb.key(1, pb.FIXED64)
    for field in (2, 3)
}
_VALUE: Final = attrgetter("value")

Encoder = Callable[[], bytes]


def _protobuf_encoder(family: Family, ctx: _Context, cache: _FamilyCache) -> Encoder:
    """What renders the family's metrics now and, while its children stay, at later scrapes.

    Each child's labels are encoded once, beside the child; a render reads the children's
    current values. A family seen changing keeps its encoder (one per label epoch and set of
    children); others render once and keep only the bytes.
    """
    varint = pb.varint
    if isinstance(family, Histogram):
        # Per child: its labels and the histogram field's key, and the child.
        items = [
            (_label_pairs(_own_labels(family, labels, ctx)) + _HISTOGRAM_KEY, h)
            for labels, h in family.children()
        ]
        template = _bucket_template(family, cache)
        encoders = [_histogram_series(head, h, template) for head, h in items]
        if len(encoders) == 1:  # the latency histogram of a probe without roles
            return encoders[0]
        return lambda: b"".join(map(call, encoders))
    if isinstance(family, Counter | Gauge):
        value_head = _VALUE_HEADS[3 if isinstance(family, Counter) else 2]
        heads: list[bytes] = []
        children: list[CounterChild | GaugeChild] = []
        for labels, child in family.children():
            pairs = _label_pairs(_own_labels(family, labels, ctx))
            heads.append(_METRIC_KEY + varint(len(pairs) + 11) + pairs + value_head)
            children.append(child)
        pack = pb.pack_double
        if len(children) == 1:
            (first,), (series,) = heads, children
            return lambda: first + pack(series.value)
        # Every series in C: the values read, packed, and put after their heads.
        return lambda: b"".join(map(add, heads, map(pack, map(_VALUE, children))))
    return bytes


def _render_protobuf(family: Family, ctx: _Context, cache: _FamilyCache) -> bytes:
    kept = cache.encoder
    if kept is not None and kept[0] == ctx.epoch and kept[1] == family.shape:
        return kept[2]()
    encoder = _protobuf_encoder(family, ctx, cache)
    if cache.changing:
        cache.encoder = (ctx.epoch, family.shape, encoder)
    return encoder()


def _rendered(family: Family, fmt: Format, ctx: _Context) -> bytes:
    cache = _cache(family)
    version = family.version  # read before rendering: a change meanwhile renders again next time
    slot = _body_slot(fmt)
    entry = cache.entries[slot]
    if entry is None:
        entry = cache.entries[slot] = _Entry()
    elif entry.version == version and entry.epoch == ctx.epoch:
        return entry.body
    elif entry.version != version:
        cache.changing = True
    body = (
        _render_protobuf(family, ctx, cache)
        if fmt is Format.PROTOBUF
        else _render_text(family, ctx, cache)
    )
    entry.version, entry.epoch, entry.body = version, ctx.epoch, body
    return body


_VERSION: Final = attrgetter("version")
_SHAPE: Final = attrgetter("shape")
_REGISTRY_VERSION: Final = attrgetter("registry.version")
# How many changed families a render re-renders between two chances to pause, and how many
# versions it compares.
_BATCH: Final = 32
_SCAN: Final = 2048


class _Layout:
    """Where every probe's family bodies sit in the merged exposition, for one body format.

    The exposition is family by family, each family probe by probe; `columns` holds, per family
    name, the family to take the header from and its bodies in probe order. A full pass lays it
    out when probes or their families come and go or the global labels change. In between, a
    render compares every family's version with the one its body was rendered at (one pass in
    C over flat lists, not a Python call per family) and renders again only the families that
    moved, in place: at 1,000 probes that is 3,000 of 20,000.
    """

    __slots__ = (
        "column_of",
        "columns",
        "contexts",
        "encoders",
        "epoch",
        "families",
        "numbers",
        "probes",
        "registries",
        "rows",
        "shapes",
        "sizes",
        "versions",
        "where",
    )

    def __init__(self, probes: list[ProbeMetrics], epoch: int) -> None:
        self.probes = probes
        self.epoch = epoch
        self.registries: list[int] = []  # each probe's registry version when laid out
        self.columns: dict[str, tuple[Family, list[bytes]]] = {}
        # Per column (in `columns` order): the length of its bodies, kept while none of them
        # moves (None: to be summed again). At 1,000 probes a scrape moves 3 columns of 20:
        # the protobuf header's length no longer sums the lengths of the other 17,000 bodies.
        # (Keeping those columns joined as well saved another 0.7 ms a render, but held a
        # second copy of 85% of every body: 3.4 MB at 1,000 probes, 7 MB more for text.)
        self.sizes: list[int | None] = []
        self.numbers: dict[str, int] = {}  # each column's place in `columns`
        # Flat, one entry per family of every probe: the family, the version its body renders,
        # its probe's context, and where the body is (its column and its row there).
        self.families: list[Family] = []
        self.versions: list[int] = []
        self.contexts: list[_Context] = []
        self.where: list[list[bytes]] = []
        self.rows: list[int] = []
        self.column_of: list[int] = []
        # Protobuf: each family's kept encoder (None: not seen changing yet) and the
        # `family.shape` it was made for, so that a batch of moved families whose encoders all
        # still hold is rendered in C, one call each, without looking at their caches.
        self.encoders: list[Encoder | None] = []
        self.shapes: list[int] = []

    def fits(self, probes: list[ProbeMetrics], epoch: int) -> bool:
        return (
            epoch == self.epoch
            and probes == self.probes
            and self.registries == list(map(_REGISTRY_VERSION, probes))
        )

    def add(self, family: Family, ctx: _Context, body: bytes) -> None:
        # The version read after rendering: nothing runs between the two on this thread.
        self.families.append(family)
        self.versions.append(family.version)
        self.contexts.append(ctx)
        column = self.columns.get(family.name)
        if column is None:
            column = self.columns[family.name] = (family, [])
            self.numbers[family.name] = len(self.sizes)
            self.sizes.append(None)
        self.column_of.append(self.numbers[family.name])
        self.where.append(column[1])
        self.rows.append(len(column[1]))
        column[1].append(body)
        self.encoders.append(None)
        self.shapes.append(-1)
        self._keep_encoder(len(self.families) - 1)

    def _keep_encoder(self, i: int) -> None:
        """Notes family i's kept protobuf encoder, if it has one for this label epoch."""
        family = self.families[i]
        cache: _FamilyCache | None = family.rendered
        kept = cache.encoder if cache is not None else None
        if kept is not None and kept[0] == self.epoch and kept[1] == family.shape:
            self.encoders[i], self.shapes[i] = kept[2], kept[1]

    def refresh(self, fmt: Format) -> Generator[None, None, None]:
        """Renders again the families whose version moved since their body was rendered."""
        families, versions, where, rows = self.families, self.versions, self.where, self.rows
        encoders, shapes, protobuf = self.encoders, self.shapes, fmt is Format.PROTOBUF
        column_of, sizes = self.column_of, self.sizes
        # In blocks, with a pause between: comparing 20,000 versions takes a few milliseconds.
        for start in range(0, len(families), _SCAN):
            stop = start + _SCAN
            now = map(_VERSION, families[start:stop])
            moved = list(compress(range(start, stop), map(ne, now, versions[start:stop])))
            for b in range(0, len(moved), _BATCH):
                batch = moved[b : b + _BATCH]
                moving = list(map(families.__getitem__, batch))
                # Read before rendering (nothing else runs until the batch is done): a change
                # made while a sliced render pauses is rendered by the next scrape.
                fresh = list(map(_VERSION, moving))
                kept = list(map(encoders.__getitem__, batch))
                held = list(map(_SHAPE, moving)) == list(map(shapes.__getitem__, batch))
                if protobuf and held and None not in kept:
                    # The steady state: each moved family's encoder, called in C. Their cache
                    # entries are not stamped: an entry left behind renders again (through the
                    # same encoder) if a later layout asks for it, which costs less than
                    # stamping 3,000 entries at every scrape.
                    bodies = list(map(call, kept))  # type: ignore[arg-type]
                elif protobuf:
                    # A family moving for the first time since the layout (the first scrapes
                    # after it), or whose series came or went, takes its own way; the others
                    # in its batch still use their encoders.
                    bodies = [
                        encoder()
                        if encoder is not None and family.shape == shapes[i]
                        else self._render_one(i, fmt)
                        for i, encoder, family in zip(batch, kept, moving, strict=True)
                    ]
                else:
                    bodies = [self._render_one(i, fmt) for i in batch]
                list(
                    map(
                        list.__setitem__,
                        map(where.__getitem__, batch),
                        map(rows.__getitem__, batch),
                        bodies,
                    )
                )
                list(map(versions.__setitem__, batch, fresh))
                # In the same step as the bodies: a column's length never lags its bodies.
                list(map(sizes.__setitem__, map(column_of.__getitem__, batch), repeat(None)))
                yield
            yield

    def sized_columns(self) -> Iterator[tuple[Family, list[bytes], int]]:
        """Each column's family, its bodies and their length (summed only if one moved)."""
        sizes = self.sizes
        for c, (family, bodies) in enumerate(self.columns.values()):
            size = sizes[c]
            if size is None:
                size = sizes[c] = sum(map(len, bodies))
            yield family, bodies, size

    def _render_one(self, i: int, fmt: Format) -> bytes:
        body = _rendered(self.families[i], fmt, self.contexts[i])
        if fmt is Format.PROTOBUF:
            self._keep_encoder(i)
        return body


def _body_slot(fmt: Format) -> int:
    return 1 if fmt is Format.PROTOBUF else 0


def _header(family: Family, fmt: Format) -> bytes:
    if fmt is Format.PROTOBUF:
        name = f"{family.name}_total" if isinstance(family, Counter) else family.name
        return (
            pb.string_field(1, name)
            + pb.string_field(2, family.documentation)
            + pb.uint_field(3, _PB_TYPES[family.kind])
        )
    name = family.name
    help_text = _help_text(family.documentation)
    if fmt is Format.TEXT and isinstance(family, Counter):
        name += "_total"
    if fmt is Format.OPENMETRICS:
        help_text = help_text.replace('"', '\\"')
    return f"# HELP {name} {help_text}\n# TYPE {name} {family.kind}\n".encode()


class _Labelled(Collector):
    """The daemon registry's families with the global labels added, for the generic encoders."""

    def __init__(self, registry: CollectorRegistry, extra: Mapping[str, str]) -> None:
        self._registry = registry
        self._extra = dict(extra)

    def collect(self) -> Iterable[Metric]:
        for family in self._registry.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [s._replace(labels={**s.labels, **self._extra}) for s in family.samples]
            yield out


@dataclass
class _ClassicHistogram:
    buckets: list[tuple[float, int]] = field(default_factory=list)
    count: int = 0
    total: float = 0.0

    def message(self) -> bytes:
        body = pb.uint_field(1, self.count) + pb.double_field(2, self.total)
        for bound, n in self.buckets:
            body += pb.bytes_field(3, pb.uint_field(1, n) + pb.double_field(2, bound))
        return body


def _generic_protobuf(families: Iterable[Metric]) -> bytes:
    """Families read from prometheus_client (the daemon's own) in the protobuf format."""
    out: list[bytes] = []
    for family in families:
        metrics: list[bytes] = []
        kind = family.type
        if kind == "histogram":
            grouped: dict[tuple[tuple[str, str], ...], _ClassicHistogram] = {}
            for s in family.samples:
                base = tuple((k, v) for k, v in s.labels.items() if k != "le")
                h = grouped.setdefault(base, _ClassicHistogram())
                if s.name.endswith("_bucket") and s.labels.get("le") != "+Inf":
                    h.buckets.append((float(s.labels["le"]), int(s.value)))
                elif s.name.endswith("_count"):
                    h.count = int(s.value)
                elif s.name.endswith("_sum"):
                    h.total = float(s.value)
            for base, h in grouped.items():
                metrics.append(
                    pb.bytes_field(4, _label_pairs(base) + pb.bytes_field(7, h.message()))
                )
            name, type_id = family.name, _PB_TYPES["histogram"]
        elif kind in ("counter", "gauge"):
            name = f"{family.name}_total" if kind == "counter" else family.name
            type_id, field_no = _PB_TYPES[kind], 3 if kind == "counter" else 2
            for s in family.samples:
                if s.name == name:
                    value = pb.bytes_field(field_no, pb.double_field(1, float(s.value)))
                    metrics.append(pb.bytes_field(4, _label_pairs(s.labels.items()) + value))
        else:
            name, type_id = family.name, _PB_UNTYPED
            for s in family.samples:
                value = pb.bytes_field(5, pb.double_field(1, float(s.value)))
                metrics.append(pb.bytes_field(4, _label_pairs(s.labels.items()) + value))
        head = (
            pb.string_field(1, name)
            + pb.string_field(2, family.documentation)
            + pb.uint_field(3, type_id)
        )
        out.append(pb.delimited(head + b"".join(metrics)))
    return b"".join(out)


def chunks(parts: list[bytes], size: int = 1 << 18) -> Iterator[bytes]:
    """A rendered exposition in pieces of about `size` bytes, to write with the loop free between.

    Joining a 1,000-probe exposition (8 MB) in one piece holds the loop for milliseconds. The
    parts are many (a body per family per probe): where to cut is found in C, not part by part.
    """
    ends = list(accumulate(map(len, parts)))
    start = 0
    while start < len(parts):
        # The first part that takes the piece to `size` bytes ends it.
        reach = (ends[start - 1] if start else 0) + size
        stop = min(bisect_left(ends, reach, lo=start) + 1, len(parts))
        yield b"".join(parts[start:stop])
        start = stop


class _Steps:
    """Iterates a render's steps and keeps what the render returned."""

    def __init__(self, gen: Generator[None, None, list[bytes]]) -> None:
        self._gen = gen
        self.result: list[bytes] = []

    def __iter__(self) -> Iterator[None]:
        self.result = yield from self._gen


class Exposition(Collector):
    """Merges the daemon's and every probe's families into one exposition."""

    def __init__(self, daemon: DaemonMetrics) -> None:
        self._daemon = daemon
        self._probes: dict[str, ProbeMetrics] = {}
        self._labels: dict[str, str] = {}
        self._epoch = 0
        self._contexts: dict[str, _Context] = {}
        self._inflight: dict[Format, asyncio.Future[list[bytes]]] = {}
        # Per body format (text and OpenMetrics share theirs): where every body sits.
        self._layouts: list[_Layout | None] = [None, None]

    @property
    def labels(self) -> dict[str, str]:
        return dict(self._labels)

    @labels.setter
    def labels(self, value: Mapping[str, str]) -> None:
        if dict(value) != self._labels:
            self._labels = dict(value)
            self._epoch += 1

    def add(self, probe: ProbeMetrics) -> None:
        self._probes[probe.name] = probe

    def remove(self, name: str) -> None:
        self._probes.pop(name, None)

    def probes(self) -> list[ProbeMetrics]:
        return list(self._probes.values())

    # -- rendering -----------------------------------------------------------------------------

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """One exposition in the format the Accept header prefers, and its content type."""
        fmt = negotiate(accept)
        return self.render_format(fmt), CONTENT_TYPES[fmt]

    def render_format(self, fmt: Format) -> bytes:
        steps = self._render(fmt)
        for _ in steps:
            pass
        return b"".join(steps.result)

    async def scrape(self, accept: str) -> tuple[list[bytes], str]:
        """render() on the loop in slices; scrapers that come while one renders share it.

        The probes share this loop, so the render yields to it every `SLICE_S` of work: no
        probe waits on a scrape longer than that. (A worker thread would hold the GIL for up to
        the interpreter's 5 ms switch interval at a time, and would race the loop's writes.)
        Scrapers that come together (two Prometheus replicas, a person with curl) cost one
        render between them, and a scrape storm never queues renders behind each other.
        """
        fmt = negotiate(accept)
        future = self._inflight.get(fmt)
        if future is None:
            future = self._inflight[fmt] = asyncio.ensure_future(self._render_sliced(fmt))
            future.add_done_callback(lambda _f: self._inflight.pop(fmt, None))
        parts = await asyncio.shield(future)
        return parts, CONTENT_TYPES[fmt]

    SLICE_S: Final = 0.001

    async def _render_sliced(self, fmt: Format) -> list[bytes]:
        steps = self._render(fmt)
        budget_ns = int(self.SLICE_S * 1e9)
        started = time.perf_counter_ns()
        for _ in steps:
            if time.perf_counter_ns() - started > budget_ns:
                await asyncio.sleep(0)
                started = time.perf_counter_ns()
        return steps.result

    def _context(self, probe: ProbeMetrics, extra: Mapping[str, str], epoch: int) -> _Context:
        ctx = self._contexts.get(probe.name)
        if ctx is None or ctx.epoch != epoch:
            ctx = self._contexts[probe.name] = _Context(probe.name, extra, epoch)
        return ctx

    def _render(self, fmt: Format) -> _Steps:
        return _Steps(self._render_steps(fmt))

    def drop_caches(self) -> None:
        """Forget every rendered byte, so the next render starts from nothing (for tests)."""
        self._layouts = [None, None]
        for probe in self._probes.values():
            for family in probe.registry.families:
                family.rendered = None
                if isinstance(family, Histogram):
                    for _, child in family.children():
                        child.encoded = child.touched = None

    def _render_steps(self, fmt: Format) -> Generator[None, None, list[bytes]]:
        """Renders the exposition, yielding now and then so the caller can pause there."""
        # Snapshot: probes come and go while a sliced render waits for its next turn.
        probes = list(self._probes.values())
        extra, epoch = dict(self._labels), self._epoch
        slot = _body_slot(fmt)
        layout = self._layouts[slot]
        if layout is None or not layout.fits(probes, epoch):
            # Only when probes came or went (or labels changed) can contexts have gone stale.
            live = {p.name for p in probes}
            for name in [n for n in self._contexts if n not in live]:
                self._contexts.pop(name, None)
            layout = yield from self._lay_out(probes, fmt, extra, epoch)
            # Installed whole: a render that started on the previous layout keeps that one.
            self._layouts[slot] = layout
        else:
            yield from layout.refresh(fmt)
        daemon = _Labelled(self._daemon.registry, extra)
        if fmt is Format.PROTOBUF:
            parts = [_generic_protobuf(daemon.collect())]
            for family, bodies, size in layout.sized_columns():
                head = _header(family, fmt)
                # A delimited MetricFamily: its length, its header fields, then its metrics.
                parts += [pb.varint(len(head) + size), head]
                parts += bodies
            return parts
        if fmt is Format.TEXT:
            head = text_latest(daemon)
            tail = b""
        else:
            head = openmetrics_latest(daemon)  # type: ignore[no-untyped-call]
            head, tail = head.removesuffix(b"# EOF\n"), b"# EOF\n"
        parts = [head]
        for family, bodies in layout.columns.values():
            parts.append(_header(family, fmt))
            parts += bodies
        parts.append(tail)
        return parts

    def _lay_out(
        self, probes: list[ProbeMetrics], fmt: Format, extra: Mapping[str, str], epoch: int
    ) -> Generator[None, None, _Layout]:
        """Renders every family of every probe into a new layout, yielding after each probe."""
        layout = _Layout(probes, epoch)
        for probe in probes:
            ctx = self._context(probe, extra, epoch)
            layout.registries.append(probe.registry.version)
            for family in list(probe.registry.families):
                layout.add(family, ctx, _rendered(family, fmt, ctx))
            yield
        return layout

    def collect(self) -> Iterable[Metric]:
        """Every family as prometheus_client metrics (for generic readers and tests)."""
        extra = dict(self._labels)
        yield from _Labelled(self._daemon.registry, extra).collect()
        merged: dict[str, Metric] = {}
        for probe in list(self._probes.values()):
            for family in list(probe.registry.families):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.kind
                    )
                for name, labels, value in family.samples():
                    into.add_sample(name, {"probe": probe.name, **labels, **extra}, value)
        yield from merged.values()
