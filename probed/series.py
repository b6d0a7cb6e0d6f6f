"""Lean metric families for the probes: counters, gauges and histograms that render themselves.

prometheus_client formats every sample of every registry on every scrape (about 1 ms of CPU per
probe, during which every probe is frozen) and spends a lock and a value object per bucket. These
families keep plain numbers, count their own changes (`version`) so the exposition re-renders only
what changed since the last scrape, and give each latency histogram a sparse exponential bucket
set (a Prometheus native histogram) beside its classic buckets, so percentiles are exact to a few
per cent whatever the SLO boundaries are.

Everything here runs on the event loop. Rendering (probed/exposition.py) runs on it too, in
slices; between slices counts move, which is fine: a family's rendering is stamped with the
version read before it was rendered, so a change during a render is rendered by the next scrape.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from itertools import accumulate
from typing import Any, ClassVar, Final, Generic, TypeVar

# Native histogram resolution: each bucket is 2^(2^-5) = 1.0219 times wider than the one before,
# so a quantile interpolated inside a bucket is off by at most 2.2% (the target is 5%).
NATIVE_SCHEMA = 5
_NATIVE_SCALE = 1 << NATIVE_SCHEMA
# Observations at or below this fall in the zero bucket (the Go client's default).
NATIVE_ZERO_THRESHOLD = 2.0**-128

Labels = tuple[str, ...]


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (1.0, 0.005, +Inf, NaN)."""
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(value)


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Family:
    """One metric family of one probe: named children by label values, and a change count."""

    kind: ClassVar[str]
    # Slots: a render reads `version` of 20,000 families at 1,000 probes; a slot is one read
    # where an instance dict is a lookup in a separate object (and more memory per family).
    __slots__ = ("documentation", "labelnames", "name", "rendered", "shape", "version")

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        # Bumped by every change to any child, and when children come and go: the exposition
        # keeps a family's rendering until this moves.
        self.version = 0
        # Bumped only when children come and go: the exposition keeps, per family that changes
        # often, each child's encoded labels beside the child until this moves.
        self.shape = 0
        # The exposition's rendered series of this family (probed/exposition.py owns its shape).
        self.rendered: Any = None

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """(sample name, labels, value) of every series, for tests and generic readers."""
        raise NotImplementedError


_C = TypeVar("_C")


class _Parent(Family, Generic[_C]):
    __slots__ = ("_children", "_only")

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        self._children: dict[Labels, _C] = {}
        self._only: _C | None = None
        if not self.labelnames:
            self._only = self._children[()] = self._make()

    def _make(self) -> _C:
        raise NotImplementedError

    def labels(self, *values: str) -> _C:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            child = self._children[values] = self._make()
            self.version += 1
            self.shape += 1
        return child

    def remove(self, *values: str) -> None:
        if self._children.pop(values, None) is not None:
            self.version += 1
            self.shape += 1

    def clear(self) -> None:
        """Drop every labelled series (a family without labels keeps its one series)."""
        if self.labelnames and self._children:
            self._children.clear()
            self.version += 1
            self.shape += 1

    def children(self) -> list[tuple[Labels, _C]]:
        # list() of a dict is one C call: safe to take from a worker thread while the loop adds.
        return list(self._children.items())

    def _single(self) -> _C:
        if self._only is None:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use labels() first")
        return self._only


class CounterChild:
    __slots__ = ("_family", "value")

    def __init__(self, family: Family) -> None:
        self._family = family
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount
        self._family.version += 1


class Counter(_Parent[CounterChild]):
    """A monotonic counter; `name` is given with its `_total` suffix, as it is queried."""

    kind = "counter"
    __slots__ = ()

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name.removesuffix("_total"), documentation, labelnames)

    def _make(self) -> CounterChild:
        return CounterChild(self)

    def inc(self, amount: float = 1) -> None:
        self._single().inc(amount)

    @property
    def value(self) -> float:
        return self._single().value

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        for values, child in self.children():
            yield f"{self.name}_total", dict(zip(self.labelnames, values, strict=True)), child.value


class GaugeChild:
    __slots__ = ("_family", "value")

    def __init__(self, family: Family) -> None:
        self._family = family
        self.value: float = 0

    def set(self, value: float) -> None:
        # probe_success is set on every reply: unchanged, it need not be rendered again.
        if value != self.value:
            self.value = value
            self._family.version += 1

    def inc(self, amount: float = 1) -> None:
        self.value += amount
        self._family.version += 1

    def dec(self, amount: float = 1) -> None:
        self.value -= amount
        self._family.version += 1


class Gauge(_Parent[GaugeChild]):
    kind = "gauge"
    __slots__ = ()

    def _make(self) -> GaugeChild:
        return GaugeChild(self)

    def set(self, value: float) -> None:
        self._single().set(value)

    def inc(self, amount: float = 1) -> None:
        self._single().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._single().dec(amount)

    @property
    def value(self) -> float:
        return self._single().value

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        for values, child in self.children():
            yield self.name, dict(zip(self.labelnames, values, strict=True)), child.value


def native_index(value: float) -> int:
    """The native bucket holding `value` > 0: bucket i covers (2^((i-1)/32), 2^(i/32)]."""
    return math.ceil(math.log2(value) * _NATIVE_SCALE)


def native_upper_bound(index: int) -> float:
    return float(2.0 ** (index / _NATIVE_SCALE))


# How many native buckets an encoder may be told about between two encodings; past that it
# re-reads them all (a histogram nobody scrapes in protobuf stops keeping the list).
TOUCHED_MAX: Final = 32


class HistogramChild:
    """Classic buckets (non-cumulative here, cumulative on the wire) and, if asked, native ones.

    Native buckets are only ever added and incremented, never dropped, and only by `observe`:
    the protobuf encoder (probed/exposition.py) relies on it to re-encode, between two scrapes,
    only the buckets listed in `touched`.
    """

    __slots__ = ("_family", "count", "counts", "encoded", "native", "sum", "touched", "zero")

    def __init__(self, family: Histogram) -> None:
        self._family = family
        self.counts = [0] * (len(family.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0
        self.native: dict[int, int] | None = {} if family.native else None
        self.zero = 0
        # The native buckets observed since the encoder last read them (None: not known, read
        # them all), and the encoder's state; both belong to the exposition.
        self.touched: list[int] | None = None
        self.encoded: Any = None

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._family.bounds, value)] += 1
        self.sum += value
        self.count += 1
        native = self.native
        if native is not None:
            if value <= NATIVE_ZERO_THRESHOLD:
                self.zero += 1
            else:
                index = native_index(value)
                native[index] = native.get(index, 0) + 1
                touched = self.touched
                if touched is not None:
                    if len(touched) < TOUCHED_MAX:
                        touched.append(index)
                    else:
                        self.touched = None
        self._family.version += 1

    def cumulative(self) -> list[int]:
        return list(accumulate(self.counts))


class Histogram(_Parent[HistogramChild]):
    kind = "histogram"
    __slots__ = ("bounds", "native")

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        native: bool = False,
    ) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets if b != math.inf))
        self.native = native
        super().__init__(name, documentation, labelnames)

    def _make(self) -> HistogramChild:
        return HistogramChild(self)

    def observe(self, value: float) -> None:
        self._single().observe(value)

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        les = [format_value(b) for b in self.bounds] + ["+Inf"]
        for values, child in self.children():
            labels = dict(zip(self.labelnames, values, strict=True))
            for le, n in zip(les, child.cumulative(), strict=True):
                yield f"{self.name}_bucket", {**labels, "le": le}, n
            yield f"{self.name}_count", labels, child.count
            yield f"{self.name}_sum", labels, child.sum


class Registry:
    """The families of one probe, in the order they were declared."""

    def __init__(self) -> None:
        self.families: list[Family] = []
        # Bumped when families come and go: the exposition lays the families out again.
        self.version = 0

    def register(self, family: _F) -> _F:
        self.families.append(family)
        self.version += 1
        return family

    def unregister(self, family: Family) -> None:
        """Stop exporting a family (the exposition walks this list on every render)."""
        try:
            self.families.remove(family)
        except ValueError:
            raise KeyError(family.name) from None
        self.version += 1

    def get_sample_value(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        wanted = dict(labels or {})
        for family in list(self.families):
            for sample, sample_labels, value in family.samples():
                if sample == name and sample_labels == wanted:
                    return float(value)
        return None


_F = TypeVar("_F", bound=Family)
