"""One exposition from several: the parent's own families and every worker's, merged per family.

Workers run disjoint sets of probes, so their per-probe series never collide: a family's series
from each worker are concatenated under one header (HELP and TYPE once). The families that
describe a process rather than a probe (process_*, the event-loop lag) would collide, so each
worker's get a `worker` label; the parent's own (build, reload, process) stay as they are, and the
workers' copies of the parent-only families are dropped.

Nothing is decoded beyond family boundaries: text is split at its `# HELP`/`# TYPE` lines, and
protobuf at its length prefixes. Two serialised MetricFamily messages of the same name concatenate
into one (protobuf merges repeated fields), so a merged family is the bodies joined under a new
length prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from probed import contract
from probed.exposition import Format

# What a worker exports that only the parent can state truthfully (the config it validated, the
# build it runs) or that the parent does not measure (it runs no probe, so its own lag is moot).
WORKER_DROPS: Final = frozenset(
    {
        "probed_build_info",
        "probed_config_last_reload_successful",
        "probed_config_last_reload_success_timestamp_seconds",
    }
)
PARENT_DROPS: Final = frozenset({"probed_event_loop_lag_seconds"})
# Families that describe the worker process itself (probed/contract.py lists them): labelled
# with the worker's index. OpenMetrics names a counter's family without its _total.
PER_WORKER: Final = contract.PER_WORKER | {n.removesuffix("_total") for n in contract.PER_WORKER}
WORKER_LABEL: Final = "worker"


@dataclass
class _Family:
    header: bytes
    bodies: list[bytes] = field(default_factory=list)


def _text_families(body: bytes) -> Iterable[tuple[str, bytes, bytes]]:
    """(name, header lines, sample lines) per family of a text or OpenMetrics exposition."""
    pos, end = 0, len(body)
    while pos < end:
        # A family starts at its comment lines (HELP, TYPE, UNIT) and runs to the next family's.
        header_start = pos
        name = ""
        while pos < end and body.startswith(b"# ", pos):
            eol = body.find(b"\n", pos)
            eol = end if eol < 0 else eol + 1
            words = body[pos:eol].split(b" ", 3)
            if len(words) >= 3 and words[1] in (b"HELP", b"TYPE", b"UNIT"):
                this = words[2].strip().decode()
                if name and this != name:
                    break
                name = this
            pos = eol
        samples_start = pos
        nxt = body.find(b"\n# ", pos - 1 if pos > 0 else 0)
        pos = end if nxt < 0 else nxt + 1
        if name:
            yield name, body[header_start:samples_start], body[samples_start:pos]


def _label_text(lines: bytes, worker: str) -> bytes:
    pair = f'{WORKER_LABEL}="{worker}"'.encode()
    out = []
    for line in lines.splitlines(keepends=True):
        brace = line.find(b"{")
        space = line.find(b" ")
        if 0 <= brace < space or (brace >= 0 and space < 0):
            closing = line.find(b"}", brace)
            inner = b"" if closing == brace + 1 else b","
            out.append(line[: brace + 1] + pair + inner + line[brace + 1 :])
        elif space > 0:
            out.append(line[:space] + b"{" + pair + b"}" + line[space:])
        else:
            out.append(line)
    return b"".join(out)


def merge_text(parent: bytes, workers: Sequence[tuple[str, bytes]], fmt: Format) -> list[bytes]:
    """The parent's text (or OpenMetrics) exposition merged with each (worker, body)."""
    eof = b"# EOF\n"
    families: dict[str, _Family] = {}
    for name, header, samples in _text_families(parent.removesuffix(eof)):
        if name not in PARENT_DROPS:
            families.setdefault(name, _Family(header)).bodies.append(samples)
    for worker, body in workers:
        for name, header, samples in _text_families(body.removesuffix(eof)):
            if name in WORKER_DROPS:
                continue
            labelled = _label_text(samples, worker) if name in PER_WORKER else samples
            families.setdefault(name, _Family(header)).bodies.append(labelled)
    parts: list[bytes] = []
    for family in families.values():
        parts.append(family.header)
        parts.extend(family.bodies)
    if fmt is Format.OPENMETRICS:
        parts.append(eof)
    return parts


# -- protobuf: just enough of the wire format to find boundaries ----------------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _fields(message: bytes) -> Iterable[tuple[int, int, int, int]]:
    """(field number, wire type, start of the field's key, end of the field) per field."""
    pos, end = 0, len(message)
    while pos < end:
        start = pos
        key, pos = _varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(message, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(message, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("truncated protobuf message")
        yield number, wire, start, pos


def _family_name(message: bytes) -> str:
    for number, wire, start, stop in _fields(message):
        if number == 1 and wire == 2:
            _key, pos = _varint(message, start)
            _length, pos = _varint(message, pos)
            return message[pos:stop].decode()
    return ""


def protobuf_families(body: bytes) -> Iterable[tuple[str, bytes]]:
    """(name, message) per length-delimited MetricFamily."""
    pos, end = 0, len(body)
    while pos < end:
        length, pos = _varint(body, pos)
        message = body[pos : pos + length]
        if len(message) != length:
            raise ValueError("truncated protobuf exposition")
        pos += length
        yield _family_name(message), message


def _label_pair(name: str, value: str) -> bytes:
    def string(number: int, text: str) -> bytes:
        raw = text.encode()
        return _encode_varint(number << 3 | 2) + _encode_varint(len(raw)) + raw

    pair = string(1, name) + string(2, value)
    return _encode_varint(1 << 3 | 2) + _encode_varint(len(pair)) + pair


def _label_protobuf(message: bytes, worker: str) -> bytes:
    """The family with a `worker` label added to each of its metrics (field 4)."""
    pair = _label_pair(WORKER_LABEL, worker)
    out = []
    for number, wire, start, stop in _fields(message):
        if number == 4 and wire == 2:
            _key, pos = _varint(message, start)
            _length, pos = _varint(message, pos)
            metric = pair + message[pos:stop]
            out.append(b"\x22" + _encode_varint(len(metric)) + metric)
        else:
            out.append(message[start:stop])
    return b"".join(out)


def merge_protobuf(parent: bytes, workers: Sequence[tuple[str, bytes]]) -> list[bytes]:
    families: dict[str, list[bytes]] = {}
    for name, message in protobuf_families(parent):
        if name not in PARENT_DROPS:
            families.setdefault(name, []).append(message)
    for worker, body in workers:
        for name, message in protobuf_families(body):
            if name in WORKER_DROPS:
                continue
            labelled = _label_protobuf(message, worker) if name in PER_WORKER else message
            families.setdefault(name, []).append(labelled)
    parts: list[bytes] = []
    for messages in families.values():
        parts.append(_encode_varint(sum(map(len, messages))))
        parts.extend(messages)
    return parts


def merge(parent: bytes, workers: Sequence[tuple[str, bytes]], fmt: Format) -> list[bytes]:
    if fmt is Format.PROTOBUF:
        return merge_protobuf(parent, workers)
    return merge_text(parent, workers, fmt)
