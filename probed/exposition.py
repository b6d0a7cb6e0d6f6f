"""/metrics: the daemon's and every probe's families in one exposition, rendered incrementally.

Three formats, chosen by the scraper's Accept header: the Prometheus text format (0.0.4),
OpenMetrics 1.0, and the delimited protobuf format (`io.prometheus.client.MetricFamily`), the only
one that carries native histograms, which Prometheus asks for when native histograms are enabled.

A scrape must not stall the probes (they share the process): each probe family keeps its rendered
bytes per format and renders again only when its `version` moved or the global labels changed, so
a scrape of 1,000 probes re-renders the few families that changed (the latency histogram and the
message counters) and copies the rest. Concurrent scrapers share one render in flight.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
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
    Family,
    Gauge,
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

    __slots__ = ("bucket_tails", "changing", "entries", "prefixes")

    def __init__(self) -> None:
        self.bucket_tails: list[bytes] | None = None
        # Per body format (text and OpenMetrics share their series lines): the rendered bytes
        # and the (version, epoch) they render. Updated in place, not replaced, so that a scrape
        # leaves no new long-lived objects behind for the collector's full passes to walk.
        self.entries: list[_Entry | None] = [None, None]
        # epoch -> per child: text line prefixes (histograms: one per bucket) and label bytes.
        # Kept only for families seen changing between renders (the latency histogram, message
        # counters): most families never change after their first render, and their prefixes
        # would cost more memory than the rendered bytes themselves.
        self.prefixes: tuple[int, dict[Labels, tuple[list[str], bytes]]] = (-1, {})
        self.changing = False


def _cache(family: Family) -> _FamilyCache:
    found: _FamilyCache | None = family.rendered
    if found is None:
        found = family.rendered = _FamilyCache()
    return found


def _prefixes(
    family: Family, labels: Labels, ctx: _Context, cache: _FamilyCache
) -> tuple[list[str], bytes]:
    epoch, table = cache.prefixes
    if epoch != ctx.epoch:
        table = {}
        cache.prefixes = (ctx.epoch, table)
    found = table.get(labels)
    if found is not None:
        return found
    # Sorted by name, as prometheus_client writes them (people and tests read them so).
    own = sorted([*ctx.pb_pairs, *zip(family.labelnames, labels, strict=True)])

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
    found = (lines, _label_pairs(own))
    if cache.changing:
        table[labels] = found
    return found


def _render_text(family: Family, ctx: _Context, cache: _FamilyCache) -> bytes:
    out: list[str] = []
    if isinstance(family, Histogram):
        for labels, h in family.children():
            lines, _ = _prefixes(family, labels, ctx, cache)
            out.extend(map(str.__add__, lines, map(str, h.cumulative())))
            out.append(lines[-2] + str(h.count))
            out.append(lines[-1] + format_value(h.sum))
    elif isinstance(family, Counter | Gauge):
        for labels, child in family.children():
            lines, _ = _prefixes(family, labels, ctx, cache)
            out.append(lines[0] + format_value(child.value))
    return ("\n".join(out) + "\n").encode() if out else b""


# Fields every native histogram carries the same: schema and zero threshold.
_NATIVE_HEAD: Final = pb.sint_field(5, NATIVE_SCHEMA) + pb.double_field(6, NATIVE_ZERO_THRESHOLD)
_SPAN_KEY: Final = pb.key(12, pb.LENGTH_DELIMITED)
_SPAN_OFFSET_KEY: Final = pb.key(1, pb.VARINT)
_SPAN_LENGTH_KEY: Final = pb.key(2, pb.VARINT)


def _span(offset: int, length: int) -> bytes:
    body = _SPAN_OFFSET_KEY + pb.varint(pb.zigzag(offset)) + _SPAN_LENGTH_KEY + pb.varint(length)
    return _SPAN_KEY + pb.varint(len(body)) + body


def _native_fields(h: HistogramChild) -> bytes:
    native = h.native
    assert native is not None
    parts = [_NATIVE_HEAD, pb.uint_field(7, h.zero)]
    indexes = sorted(native)
    if not indexes:
        # A no-op span marks the histogram native while it has no observations yet.
        return b"".join([*parts, pb.bytes_field(12, pb.sint_field(1, 0) + pb.uint_field(2, 0))])
    spans: list[tuple[int, int]] = []  # (offset from the end of the previous span, length)
    deltas: list[bytes] = []
    previous_index, previous_count = indexes[0] - 1, 0
    varint, zigzag = pb.varint, pb.zigzag
    for index in indexes:
        if not spans:
            spans.append((index, 1))
        elif index == previous_index + 1:
            spans[-1] = (spans[-1][0], spans[-1][1] + 1)
        else:
            spans.append((index - previous_index - 1, 1))
        count = native[index]
        deltas.append(varint(zigzag(count - previous_count)))
        previous_index, previous_count = index, count
    parts += [_span(o, n) for o, n in spans]
    # positive_delta, packed: one key and length for the lot (parsers accept packed or not).
    parts.append(pb.bytes_field(13, b"".join(deltas)))
    return b"".join(parts)


def _bucket_tails(family: Histogram, cache: _FamilyCache) -> list[bytes]:
    # The upper_bound field of each classic bucket never changes: encoded once per family.
    if cache.bucket_tails is None:
        cache.bucket_tails = [pb.double_field(2, b) for b in family.bounds]
    return cache.bucket_tails


_BUCKET_KEY: Final = pb.key(3, pb.LENGTH_DELIMITED)
_COUNT_KEY: Final = pb.key(1, pb.VARINT)


def _histogram_message(family: Histogram, h: HistogramChild, cache: _FamilyCache) -> bytes:
    parts = [pb.uint_field(1, h.count), pb.double_field(2, h.sum)]
    for tail, cumulative in zip(_bucket_tails(family, cache), h.cumulative(), strict=False):
        count = pb.varint(cumulative)
        # Bucket {cumulative_count = 1, upper_bound = 2}: 1 key byte + count + 9-byte double.
        parts.append(_BUCKET_KEY + pb.varint(len(count) + 10) + _COUNT_KEY + count + tail)
    if h.native is not None:
        parts.append(_native_fields(h))
    return b"".join(parts)


def _render_protobuf(family: Family, ctx: _Context, cache: _FamilyCache) -> bytes:
    out: list[bytes] = []
    if isinstance(family, Histogram):
        for labels, h in family.children():
            _, pairs = _prefixes(family, labels, ctx, cache)
            out.append(
                pb.bytes_field(4, pairs + pb.bytes_field(7, _histogram_message(family, h, cache)))
            )
    elif isinstance(family, Counter | Gauge):
        field = 3 if isinstance(family, Counter) else 2
        for labels, child in family.children():
            _, pairs = _prefixes(family, labels, ctx, cache)
            value = pb.bytes_field(field, pb.double_field(1, float(child.value)))
            out.append(pb.bytes_field(4, pairs + value))
    return b"".join(out)


def _rendered(family: Family, fmt: Format, ctx: _Context) -> bytes:
    cache = _cache(family)
    version = family.version  # read before rendering: a change meanwhile renders again next time
    slot = 1 if fmt is Format.PROTOBUF else 0
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

    Joining a 1,000-probe exposition (8 MB) in one piece holds the loop for milliseconds.
    """
    batch: list[bytes] = []
    held = 0
    for part in parts:
        batch.append(part)
        held += len(part)
        if held >= size:
            yield b"".join(batch)
            batch, held = [], 0
    if batch:
        yield b"".join(batch)


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

    def _render_steps(self, fmt: Format) -> Generator[None, None, list[bytes]]:
        """Renders the exposition, yielding after each probe so the caller can pause there."""
        # Snapshot: probes come and go while a sliced render waits for its next turn.
        probes = list(self._probes.values())
        extra, epoch = dict(self._labels), self._epoch
        live = {p.name for p in probes}
        for name in [n for n in self._contexts if n not in live]:
            self._contexts.pop(name, None)
        # Family name -> (a family to take the header from, the probes' rendered series).
        merged: dict[str, tuple[Family, list[bytes]]] = {}
        for probe in probes:
            ctx = self._context(probe, extra, epoch)
            for family in list(probe.registry.families):
                body = _rendered(family, fmt, ctx)
                slot = merged.get(family.name)
                if slot is None:
                    merged[family.name] = (family, [body])
                else:
                    slot[1].append(body)
            yield
        daemon = _Labelled(self._daemon.registry, extra)
        if fmt is Format.PROTOBUF:
            parts = [_generic_protobuf(daemon.collect())]
            for family, bodies in merged.values():
                head = _header(family, fmt)
                # A delimited MetricFamily: its length, its header fields, then its metrics.
                parts += [pb.varint(len(head) + sum(map(len, bodies))), head, *bodies]
            return parts
        if fmt is Format.TEXT:
            head = text_latest(daemon)
            tail = b""
        else:
            head = openmetrics_latest(daemon)  # type: ignore[no-untyped-call]
            head, tail = head.removesuffix(b"# EOF\n"), b"# EOF\n"
        parts = [head]
        for family, bodies in merged.values():
            parts.append(_header(family, fmt))
            parts.extend(bodies)
        parts.append(tail)
        return parts

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
