"""The wire harness's reader (tests/perf/wire_parse.py) on synthesised captures.

Frames are encoded by the websockets library (masked as a client sends them, unmasked as a server
does), packets and pcap files built here byte by byte, so each case pins one thing the reader must
get right: several frames in a segment, a frame over several segments, masking, fragments,
segments out of order or repeated, cut short by the snapshot length, and the sequence number
wrapping.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from websockets.frames import Frame, Opcode

from tests.perf.wire import Reported, message_key, pair, wire_times
from tests.perf.wire_parse import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL2,
    OP_BINARY,
    OP_TEXT,
    SYN,
    CaptureStats,
    FrameReader,
    PcapError,
    messages,
    read_records,
    tcp_segment,
    unmask,
)

SERVER = 8765
CLIENT = 40000
UPGRADE_REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"
UPGRADE_RESPONSE = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"


def ws(payload: bytes, *, opcode: Opcode = Opcode.TEXT, fin: bool = True, mask: bool) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=mask)


def packet(
    sport: int, dport: int, seq: int, payload: bytes = b"", flags: int = 0x18, *, link: int = 1
) -> bytes:
    """Link header + IPv4 + TCP (20-byte header, no options) + payload."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0, 64, 6, 0,
        bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]),
    )  # fmt: skip
    if link == LINKTYPE_LINUX_SLL2:
        head = struct.pack("!HHIHBB8s", 0x0800, 0, 1, 772, 0, 0, b"\0" * 8)
    else:
        head = b"\0" * 12 + b"\x08\x00"
    return head + ip + tcp + payload


def pcap(
    records: list[tuple[int, bytes]],
    *,
    nano: bool = True,
    order: str = "<",
    linktype: int = LINKTYPE_ETHERNET,
    snaplen: int = 65535,
) -> bytes:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for ts_ns, data in records:
        sec, rest = divmod(ts_ns, 1_000_000_000)
        frac = rest if nano else rest // 1000
        kept = data[:snaplen]
        out.append(struct.pack(order + "IIII", sec, frac, len(kept), len(data)) + kept)
    return b"".join(out)


def read(tmp_path: Path, blob: bytes) -> tuple[list[tuple[bool, int, int, bytes]], CaptureStats]:
    path = tmp_path / "c.pcap"
    path.write_bytes(blob)
    stats = CaptureStats()
    got = [
        (m.from_client, m.message.ts_ns, m.message.opcode, m.message.payload)
        for m in messages(path, SERVER, stats)
    ]
    return got, stats


class Conversation:
    """One connection's packets with both sequence spaces tracked, upgrade included."""

    def __init__(self, client_isn: int = 1000, server_isn: int = 5000) -> None:
        self.seq = {True: client_isn + 1, False: server_isn + 1}
        self.records: list[tuple[int, bytes]] = [
            (1, packet(CLIENT, SERVER, client_isn, flags=SYN)),
            (2, packet(SERVER, CLIENT, server_isn, flags=SYN | 0x10)),
        ]
        self.send(3, True, UPGRADE_REQUEST)
        self.send(4, False, UPGRADE_RESPONSE)

    def segment(self, from_client: bool, data: bytes) -> bytes:
        """A packet with the next bytes of one direction (not yet recorded)."""
        seq = self.seq[from_client] % (1 << 32)
        self.seq[from_client] += len(data)
        ports = (CLIENT, SERVER) if from_client else (SERVER, CLIENT)
        return packet(*ports, seq, data)

    def send(self, ts_ns: int, from_client: bool, data: bytes) -> None:
        self.records.append((ts_ns, self.segment(from_client, data)))


def test_two_frames_in_one_segment_each_stamped_with_it(tmp_path: Path) -> None:
    c = Conversation()
    c.send(100, False, ws(b'{"id":"a"}', mask=False) + ws(b'{"id":"b"}', mask=False))
    got, stats = read(tmp_path, pcap(c.records))
    assert got == [(False, 100, OP_TEXT, b'{"id":"a"}'), (False, 100, OP_TEXT, b'{"id":"b"}')]
    assert stats.connections == 1 and stats.resyncs == 0


def test_a_masked_frame_split_over_two_segments_completes_with_the_second(tmp_path: Path) -> None:
    c = Conversation()
    frame = ws(b"bare-3-17", mask=True)
    c.send(100, True, frame[:5])
    c.send(250, True, frame[5:])
    got, _ = read(tmp_path, pcap(c.records))
    assert got == [(True, 250, OP_TEXT, b"bare-3-17")]


def test_a_segment_ending_one_frame_and_starting_the_next(tmp_path: Path) -> None:
    c = Conversation()
    a, b = ws(b"first", mask=True), ws(b"second" * 30, mask=True)  # the second: 16-bit length
    c.send(100, True, a + b[:4])
    c.send(200, True, b[4:])
    got, _ = read(tmp_path, pcap(c.records))
    assert got == [(True, 100, OP_TEXT, b"first"), (True, 200, OP_TEXT, b"second" * 30)]


def test_fragments_with_a_ping_between_make_one_message(tmp_path: Path) -> None:
    c = Conversation()
    c.send(100, True, ws(b"he", fin=False, mask=True))
    c.send(110, True, ws(b"", opcode=Opcode.PING, mask=True))
    c.send(120, True, ws(b"llo", opcode=Opcode.CONT, mask=True))
    c.send(130, False, ws(b"\x00\x01", opcode=Opcode.BINARY, mask=False))
    got, _ = read(tmp_path, pcap(c.records))
    assert got == [
        (True, 110, 0x9, b""),
        (True, 120, OP_TEXT, b"hello"),
        (False, 130, OP_BINARY, b"\x00\x01"),
    ]


def test_out_of_order_and_repeated_segments(tmp_path: Path) -> None:
    c = Conversation()
    frame = ws(b"x" * 40, mask=True)
    first, second = c.segment(True, frame[:10]), c.segment(True, frame[10:])
    c.records += [(100, second), (150, first), (160, first)]  # the hole filled, then repeated
    got, stats = read(tmp_path, pcap(c.records))
    assert got == [(True, 150, OP_TEXT, b"x" * 40)]
    assert stats.duplicates == 1


def test_sequence_numbers_wrapping_past_2_to_the_32(tmp_path: Path) -> None:
    c = Conversation(client_isn=(1 << 32) - 60)  # the upgrade request crosses the wrap
    c.send(100, True, ws(b"after the wrap", mask=True))
    got, _ = read(tmp_path, pcap(c.records))
    assert got == [(True, 100, OP_TEXT, b"after the wrap")]


def test_a_segment_cut_by_the_snapshot_length_resyncs_at_the_next(tmp_path: Path) -> None:
    c = Conversation()
    c.send(100, False, ws(b"y" * 300, mask=False))  # cut: 54 bytes of headers + 86 of it
    c.send(200, False, ws(b"next", mask=False))
    got, stats = read(tmp_path, pcap(c.records, snaplen=140))
    assert got == [(False, 200, OP_TEXT, b"next")]
    assert stats.truncated == 1 and stats.resyncs == 1


def test_capture_formats_microseconds_big_endian_and_linux_sll2(tmp_path: Path) -> None:
    c = Conversation()
    c.send(7_000_123_456, True, ws(b"m", mask=True))
    got, _ = read(tmp_path, pcap(c.records, nano=False, order=">"))
    assert got == [(True, 7_000_123_000, OP_TEXT, b"m")]  # microseconds: the ns are lost
    sll2 = [
        (ts, packet(CLIENT, SERVER, 1, b"\x81\x00", flags=0x18, link=LINKTYPE_LINUX_SLL2))
        for ts in (5,)
    ]
    linktype, records = read_records(io.BytesIO(pcap(sll2, linktype=LINKTYPE_LINUX_SLL2)))
    seg = tcp_segment(linktype, *next(records)[:2])
    assert seg is not None
    assert (seg.src, seg.dst, seg.seq, seg.payload) == (
        ("127.0.0.1", CLIENT), ("127.0.0.1", SERVER), 1, b"\x81\x00"
    )  # fmt: skip


def test_not_a_pcap_file_is_refused() -> None:
    with pytest.raises(PcapError):
        read_records(io.BytesIO(b"\x0a\x0d\x0d\x0a" + b"\0" * 40))  # pcapng


def test_unmask_long_payloads_and_a_64_bit_length() -> None:
    payload = bytes(range(256)) * 300  # 76,800 bytes: the 64-bit length form
    reader = FrameReader(in_http=False)
    (message,) = reader.feed(ws(payload, opcode=Opcode.BINARY, mask=True), 9)
    assert message.payload == payload
    assert unmask(unmask(b"abcdefg", b"\x01\x02\x03\x04"), b"\x01\x02\x03\x04") == b"abcdefg"


def test_pairing_subtracts_the_wire_per_message() -> None:
    wire = {"p1/a": (1_000_000, 1_500_000), "bare-0-1": (2_000_000, 2_200_000)}
    offset = 10  # realtime - monotonic
    rows = [
        Reported("p1/a", 1_000_000 - offset - 30_000, 600_000, kept=True),
        Reported("p1/missing", 0, 1, kept=True),
    ]
    got = pair(rows, wire, offset)
    assert got["unpaired"] == 1
    assert got["error"]["pairs"] == 1
    assert got["error"]["p50_ms"] == pytest.approx(0.1)  # 0.6 reported - 0.5 on the wire
    assert got["send_side"]["p50_ms"] == pytest.approx(0.03)
    assert got["receive_side"]["p50_ms"] == pytest.approx(0.07)
    tainted = pair([Reported("bare-0-1", 0, 300_000, kept=False)], wire, offset)
    assert tainted["tainted_fraction"] == 1.0 and tainted["error_kept"]["pairs"] == 0
    assert message_key('{"id":"r-0-1","probe":"p1","seq":1}') == "p1/r-0-1"
    assert message_key(b"bare-0-1") == "bare-0-1"
    assert message_key("{not json") is None


def test_a_retransmitted_reply_is_timed_by_its_last_copy(tmp_path: Path) -> None:
    """A copy the client's kernel dropped was never read: the client had the reply only when
    TCP sent it again, and that wait is the wire's."""
    c = Conversation()
    c.send(100, True, ws(b'{"probe":"p1","id":"a"}', mask=True))
    reply = c.segment(False, ws(b'{"probe":"p1","id":"a"}', mask=False))
    c.records += [(200, reply), (400, reply)]
    c.send(500, True, ws(b"bare-0-1", mask=True))
    c.send(520, False, ws(b"bare-0-1", mask=False))
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap(c.records))
    times, counts = wire_times(path, SERVER)
    assert times == {"p1/a": (100, 400), "bare-0-1": (500, 520)}
    assert counts["replies_retransmitted"] == 1 and counts["duplicate_segments"] == 1


def test_a_new_connection_on_the_same_client_port_starts_afresh(tmp_path: Path) -> None:
    first = Conversation(client_isn=1000, server_isn=5000)
    first.send(10, True, ws(b"old", mask=True) + ws(b"cut", mask=True)[:3])  # left mid-frame
    second = Conversation(client_isn=900_000, server_isn=7000)
    second.send(20, True, ws(b"new", mask=True))
    got, stats = read(tmp_path, pcap(first.records + second.records))
    assert got == [(True, 10, OP_TEXT, b"old"), (True, 20, OP_TEXT, b"new")]
    assert stats.port_reuses == 2 and stats.bad_frames == 0  # each direction's new SYN
