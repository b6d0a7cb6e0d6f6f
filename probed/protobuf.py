"""The few protobuf wire-format pieces the `io.prometheus.client` exposition needs.

Hand-written rather than generated: the messages are small and fixed (metrics.proto of
prometheus/client_model), and a protobuf runtime would be a heavy dependency for five field types.
"""

from __future__ import annotations

import struct
from typing import Final

VARINT, FIXED64, LENGTH_DELIMITED = 0, 1, 2


def _encode(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Counts and lengths are mostly small: encoded once, looked up after (by hot loops directly).
SMALL_VARINTS: Final = [_encode(n) for n in range(1 << 14)]


def varint(n: int) -> bytes:
    """Unsigned LEB128; negative int64 values take ten bytes, as protobuf writes them."""
    if 0 <= n < 1 << 14:
        return SMALL_VARINTS[n]
    if 0 < n < 1 << 21:  # the cumulative counts of a histogram that ran a few hours
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    return _encode(n)


def zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def unzigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def key(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def uint_field(field: int, n: int) -> bytes:
    return key(field, VARINT) + varint(n)


def sint_field(field: int, n: int) -> bytes:
    return key(field, VARINT) + varint(zigzag(n))


pack_double: Final = struct.Struct("<d").pack


def double_field(field: int, value: float) -> bytes:
    return key(field, FIXED64) + pack_double(value)


def bytes_field(field: int, payload: bytes) -> bytes:
    return key(field, LENGTH_DELIMITED) + varint(len(payload)) + payload


def string_field(field: int, text: str) -> bytes:
    return bytes_field(field, text.encode())


def delimited(message: bytes) -> bytes:
    """One message of a length-delimited stream (what `encoding=delimited` means)."""
    return varint(len(message)) + message
