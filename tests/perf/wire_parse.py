"""Read WebSocket messages off a loopback capture: pcap records, TCP reassembly, RFC 6455 frames.

Written for the wire-error harness (tests/perf/wire.py): it needs, for every WebSocket message on
every connection to one port, the capture time of the segment whose bytes completed it. The
formats are small enough that reading them here costs less than a dependency would: a pcap file
is a 24-byte header and a 16-byte header per record; the link layers loopback captures come in
are fixed-size headers.

Each TCP direction is put back in sequence order (loopback does not lose segments, but a segment
may carry several frames, or part of one) and a message is stamped with the capture time of the
packet being read when its last byte became available: packets are read in capture order, so
that is the latest of the segments it was made of.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

# Link types (https://www.tcpdump.org/linktypes.html) and the offset of the network header.
LINKTYPE_ETHERNET = 1  # `-i lo` on Linux: a 14-byte Ethernet header with zero addresses
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113  # `-i any` before libpcap 1.10
LINKTYPE_LINUX_SLL2 = 276  # `-i any` since libpcap 1.10
_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_TCP = 6

_MICRO = 0xA1B2C3D4
_NANO = 0xA1B23C4D

SYN = 0x02
FIN = 0x01
RST = 0x04

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2


class PcapError(ValueError):
    """The file is not a pcap capture this reader understands."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One TCP segment: its capture time, endpoints, sequence number and payload.

    `length` is the payload's length on the wire; `payload` holds what the snapshot length kept
    of it, so a segment cut short has len(payload) < length.
    """

    ts_ns: int
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    flags: int
    payload: bytes
    length: int

    @property
    def truncated(self) -> bool:
        return len(self.payload) < self.length


@dataclass(frozen=True, slots=True)
class Message:
    """A whole WebSocket message (or control frame) and the capture time of its last byte."""

    ts_ns: int
    opcode: int
    payload: bytes
    end: int = 0  # the stream offset just past its last byte


def read_records(f: BinaryIO) -> tuple[int, Iterator[tuple[int, bytes, int]]]:
    """The link type and an iterator of (capture time ns, captured bytes, length on the wire)."""
    head = f.read(24)
    if len(head) < 24:
        raise PcapError("shorter than a pcap header")
    for order in ("<", ">"):
        (magic,) = struct.unpack(order + "I", head[:4])
        if magic in (_MICRO, _NANO):
            break
    else:
        raise PcapError(f"not a pcap file (magic {head[:4].hex()}); pcapng is not read here")
    scale = 1 if magic == _NANO else 1000
    linktype = struct.unpack(order + "I", head[20:24])[0] & 0x0FFFFFFF
    record = struct.Struct(order + "IIII")

    def records() -> Iterator[tuple[int, bytes, int]]:
        while True:
            rh = f.read(16)
            if len(rh) < 16:
                return  # a capture cut off mid-record ends at the last whole one
            sec, frac, incl, orig = record.unpack(rh)
            data = f.read(incl)
            if len(data) < incl:
                return
            yield sec * 1_000_000_000 + frac * scale, data, orig

    return linktype, records()


def _network_offset(linktype: int, data: bytes) -> tuple[int, int] | None:
    """(offset of the IP header, ethertype) for one record, or None if it is not IP."""
    if linktype == LINKTYPE_ETHERNET:
        return (14, struct.unpack_from("!H", data, 12)[0]) if len(data) >= 14 else None
    if linktype == LINKTYPE_LINUX_SLL:
        return (16, struct.unpack_from("!H", data, 14)[0]) if len(data) >= 16 else None
    if linktype == LINKTYPE_LINUX_SLL2:
        return (20, struct.unpack_from("!H", data, 0)[0]) if len(data) >= 20 else None
    if linktype == LINKTYPE_RAW and data:
        return 0, _ETHERTYPE_IPV4 if data[0] >> 4 == 4 else _ETHERTYPE_IPV6
    raise PcapError(f"link type {linktype} is not read here (Ethernet, raw IP, Linux SLL/SLL2)")


def _ip6(raw: bytes) -> str:
    return ":".join(f"{a:x}" for a in struct.unpack("!8H", raw))


def _ip_header(ethertype: int, data: bytes, off: int) -> tuple[str, str, int, int] | None:
    """(source, destination, offset of the TCP header, TCP bytes on the wire) if IP over TCP."""
    if ethertype == _ETHERTYPE_IPV4:
        if len(data) < off + 20 or data[off + 9] != _TCP:
            return None
        ihl = (data[off] & 0x0F) * 4
        ip_len = struct.unpack_from("!H", data, off + 2)[0]
        src = ".".join(map(str, data[off + 12 : off + 16]))
        dst = ".".join(map(str, data[off + 16 : off + 20]))
        return src, dst, off + ihl, ip_len - ihl
    if ethertype == _ETHERTYPE_IPV6:
        # Extension headers between IPv6 and TCP are not followed: loopback TCP has none.
        if len(data) < off + 40 or data[off + 6] != _TCP:
            return None
        src, dst = _ip6(data[off + 8 : off + 24]), _ip6(data[off + 24 : off + 40])
        return src, dst, off + 40, struct.unpack_from("!H", data, off + 4)[0]
    return None


def tcp_segment(linktype: int, ts_ns: int, data: bytes) -> Segment | None:
    """The TCP segment in one captured record; None for anything else or a cut-off header."""
    where = _network_offset(linktype, data)
    ip = None if where is None else _ip_header(where[1], data, where[0])
    if ip is None:
        return None
    src_ip, dst_ip, tcp_off, tcp_room = ip
    if len(data) < tcp_off + 20:
        return None
    sport, dport, seq = struct.unpack_from("!HHI", data, tcp_off)
    header = (data[tcp_off + 12] >> 4) * 4
    flags = data[tcp_off + 13]
    start = tcp_off + header
    if len(data) < start and tcp_room > header:
        return None
    length = max(0, tcp_room - header)
    return Segment(
        ts_ns, (src_ip, sport), (dst_ip, dport), seq, flags, data[start : start + length], length
    )


def unmask(payload: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte masking key, repeated (RFC 6455 5.3), as one big-integer XOR."""
    n = len(payload)
    if n == 0:
        return payload
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


@dataclass(slots=True)
class FrameReader:
    """One direction's bytes in order -> whole WebSocket messages, after the HTTP upgrade."""

    in_http: bool = True
    buffer: bytearray = field(default_factory=bytearray)
    # A message split into fragments: its opcode and the parts so far.
    partial_opcode: int | None = None
    partial: list[bytes] = field(default_factory=list)
    resyncs: int = 0
    bad_frames: int = 0
    position: int = 0  # the stream offset of buffer[0]

    def feed(self, data: bytes, ts_ns: int, at: int = 0) -> list[Message]:
        """Read `data`, which starts at stream offset `at`; the messages it completed."""
        if not self.buffer:
            self.position = at
        self.buffer += data
        if self.in_http:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return []
            del self.buffer[: end + 4]
            self.position += end + 4
            self.in_http = False
        out: list[Message] = []
        while True:
            frame = self._next_frame()
            if frame is None:
                return out
            fin, opcode, payload = frame
            if opcode >= 0x8:  # control frames may sit between the fragments of a message
                out.append(Message(ts_ns, opcode, payload, self.position))
            elif opcode == OP_CONTINUATION:
                if self.partial_opcode is None:
                    self.bad_frames += 1
                    continue
                self.partial.append(payload)
                if fin:
                    whole = b"".join(self.partial)
                    out.append(Message(ts_ns, self.partial_opcode, whole, self.position))
                    self.partial_opcode, self.partial = None, []
            elif fin:
                out.append(Message(ts_ns, opcode, payload, self.position))
            else:
                self.partial_opcode, self.partial = opcode, [payload]

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        size, at = b1 & 0x7F, 2
        if size == 126:
            if len(buf) < 4:
                return None
            size, at = struct.unpack_from("!H", buf, 2)[0], 4
        elif size == 127:
            if len(buf) < 10:
                return None
            size, at = struct.unpack_from("!Q", buf, 2)[0], 10
        masked = bool(b1 & 0x80)
        end = at + (4 if masked else 0) + size
        if len(buf) < end:
            return None
        if masked:
            payload = unmask(bytes(buf[at + 4 : end]), bytes(buf[at : at + 4]))
        else:
            payload = bytes(buf[at:end])
        del buf[:end]
        self.position += end
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def gap(self) -> None:
        """Bytes went missing (cut by the snapshot length): what is buffered cannot be finished.

        Parsing resumes at the next segment, taken to start a frame: each message here is one
        write, so segments begin at frame boundaries, and the upgrade is one segment each way.
        """
        self.buffer.clear()
        self.partial_opcode, self.partial = None, []
        self.in_http = False
        self.resyncs += 1


_HALF = 1 << 31
_MOD = 1 << 32
# Segments waiting for a hole to fill before it is taken as lost from the capture.
_MAX_PENDING = 64


@dataclass(slots=True)
class Direction:
    """One direction of one TCP connection, put back in sequence order."""

    reader: FrameReader = field(default_factory=FrameReader)
    base: int | None = None  # the sequence number of stream offset 0
    delivered: int = 0  # stream offset of the next byte the reader needs
    pending: dict[int, tuple[bytes, int]] = field(default_factory=dict)
    duplicates: int = 0
    reuses: int = 0
    # (from, to, capture time) of bytes seen again: a copy the receiver may not have had until
    # this one (loopback drops under a full backlog, then TCP retransmits).
    retransmits: list[tuple[int, int, int]] = field(default_factory=list)

    def feed(self, seg: Segment) -> list[Message]:
        if seg.flags & SYN:
            first_byte = (seg.seq + 1) % _MOD
            if self.base is not None and first_byte != self.base:
                # The same client port, a new connection (a retried connect): start afresh.
                self.reuses += 1
                self.reader, self.delivered, self.pending = FrameReader(), 0, {}
            self.base = first_byte
            return []
        if seg.length == 0:
            return []
        if self.base is None:
            # The capture began after the handshake: take this segment as the start.
            self.base = seg.seq
        offset = (seg.seq - self.base) % _MOD
        if offset >= _HALF:  # before the stream's start: a stale retransmission
            self.duplicates += 1
            return []
        self.pending.setdefault(offset, (seg.payload, seg.length))
        out: list[Message] = []
        if len(self.pending) > _MAX_PENDING and min(self.pending) > self.delivered:
            # Bytes that never came (the kernel dropped them from the capture): skip the hole.
            self.delivered = min(self.pending)
            self.reader.gap()
        while self.pending:
            # The segment that starts at or overlaps the next byte wanted, if any.
            start = self.delivered if self.delivered in self.pending else None
            if start is None:
                stale = [o for o in self.pending if o < self.delivered]
                if not stale:
                    break
                start = stale[0]
            payload, length = self.pending.pop(start)
            skip = self.delivered - start
            if skip > 0:
                self.retransmits.append((start, min(self.delivered, start + length), seg.ts_ns))
            if skip >= length:
                self.duplicates += 1
                continue
            self.delivered = start + length
            if len(payload) < length:
                kept = payload[skip:]
                if kept:
                    out += self.reader.feed(kept, seg.ts_ns, start + skip)
                self.reader.gap()
            else:
                out += self.reader.feed(payload[skip:], seg.ts_ns, start + skip)
        return out


@dataclass(frozen=True, slots=True)
class ConnectionMessage:
    """A message on one connection: the client's port, who sent it, when and what."""

    client: tuple[str, int]
    from_client: bool
    message: Message


@dataclass(slots=True)
class CaptureStats:
    records: int = 0
    segments: int = 0
    truncated: int = 0
    duplicates: int = 0
    resyncs: int = 0
    bad_frames: int = 0
    connections: int = 0
    port_reuses: int = 0
    # Per (client address, from the client): (from, to, capture time) of bytes seen again.
    retransmits: dict[tuple[tuple[str, int], bool], list[tuple[int, int, int]]] = field(
        default_factory=dict
    )


def messages(path: Path, server_port: int, stats: CaptureStats) -> Iterator[ConnectionMessage]:
    """Every WebSocket message to and from `server_port` in the capture, in capture order."""
    directions: dict[tuple[tuple[str, int], bool], Direction] = {}
    with path.open("rb") as f:
        linktype, records = read_records(f)
        for ts_ns, data, _orig in records:
            stats.records += 1
            seg = tcp_segment(linktype, ts_ns, data)
            if seg is None:
                continue
            if seg.dst[1] == server_port:
                key = (seg.src, True)
            elif seg.src[1] == server_port:
                key = (seg.dst, False)
            else:
                continue
            stats.segments += 1
            stats.truncated += seg.truncated
            direction = directions.get(key)
            if direction is None:
                direction = directions[key] = Direction()
            for message in direction.feed(seg):
                yield ConnectionMessage(key[0], key[1], message)
    stats.connections = len({client for client, _ in directions})
    for d in directions.values():
        stats.duplicates += d.duplicates
        stats.resyncs += d.reader.resyncs
        stats.bad_frames += d.reader.bad_frames
        stats.port_reuses += d.reuses
    stats.retransmits = {key: d.retransmits for key, d in directions.items() if d.retransmits}
