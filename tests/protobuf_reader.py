"""A reader for the delimited protobuf exposition, written apart from probed's own code.

Decodes just what the tests look at (metrics.proto of prometheus/client_model): each family's
name and type, and each metric's labels and whether it carries a native histogram. `fields`,
`varint` and `signed` are the wire-format pieces, for tests that read values too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any


def varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def signed(n: int) -> int:
    """The zigzag-decoded value of a sint64 field."""
    return (n >> 1) ^ -(n & 1)


def fields(data: bytes) -> list[tuple[int, Any]]:
    """(field number, value) of one message: ints, doubles as floats, nested bytes as bytes."""
    out: list[tuple[int, Any]] = []
    pos = 0
    while pos < len(data):
        key, pos = varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = varint(data, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<d", data, pos)[0], pos + 8
        elif wire == 2:
            length, pos = varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        else:
            raise ValueError(f"wire type {wire}")
        out.append((number, value))
    assert pos == len(data), "a field ran past its message"
    return out


@dataclass
class Metric:
    labels: dict[str, str]
    native: bool = False  # a histogram with a schema (field 5): native buckets


@dataclass
class MetricFamily:
    name: str = ""
    type: int = 0  # 0 counter, 1 gauge, 4 histogram
    metrics: list[Metric] = field(default_factory=list)


def read_delimited(body: bytes) -> list[MetricFamily]:
    families = []
    pos = 0
    while pos < len(body):
        length, pos = varint(body, pos)
        message = body[pos : pos + length]
        assert len(message) == length, "truncated family"
        pos += length
        family = MetricFamily()
        for number, value in fields(message):
            if number == 1 and isinstance(value, bytes):
                family.name = value.decode()
            elif number == 3 and isinstance(value, int):
                family.type = value
            elif number == 4 and isinstance(value, bytes):
                family.metrics.append(_metric(value))
        families.append(family)
    return families


def _metric(data: bytes) -> Metric:
    metric = Metric({})
    for number, value in fields(data):
        if number == 1 and isinstance(value, bytes):
            pair = dict(fields(value))
            name, text = pair[1], pair.get(2, b"")
            assert isinstance(name, bytes) and isinstance(text, bytes)
            metric.labels[name.decode()] = text.decode()
        elif number == 7 and isinstance(value, bytes):
            metric.native = any(n == 5 for n, _ in fields(value))
    return metric
