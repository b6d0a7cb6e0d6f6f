"""aiortc's statistics report turned into base units.

aiortc reports jitter in RTP timestamp units and the loss fraction as the raw 8-bit RTCP field;
both are converted here. Its round-trip time is already in seconds but is an EWMA (0.85 old,
0.15 new) of RTCP report round trips and stays None until the first matching report arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RtcpStats:
    rtt: float | None  # seconds; None until the far end has sent a receiver report on our stream
    jitter: float | None  # seconds, as the far end measures our stream
    packets_lost: int | None  # cumulative, as the far end counts our stream
    fraction_lost: float | None  # 0..1, over the far end's last report interval
    packets_sent: int
    inbound_jitter: float | None  # seconds, as we measure the far end's stream
    inbound_packets_lost: int | None  # cumulative, as we count the far end's stream
    inbound_packets_received: int


def convert(report: dict[str, Any], clock_rate: int) -> RtcpStats:
    """Pick the audio streams out of an aiortc RTCStatsReport (a dict of id to dataclass)."""
    rtt = jitter = fraction = in_jitter = None
    lost = in_lost = None
    sent = received = 0
    for stats in report.values():
        kind = getattr(stats, "kind", None)
        if kind not in (None, "audio"):
            continue
        match stats.type:
            case "remote-inbound-rtp":
                rtt = stats.roundTripTime
                jitter = stats.jitter / clock_rate
                lost = int(stats.packetsLost)
                fraction = stats.fractionLost / 256
            case "outbound-rtp":
                sent = int(stats.packetsSent)
            case "inbound-rtp":
                in_jitter = stats.jitter / clock_rate
                in_lost = int(stats.packetsLost)
                received = int(stats.packetsReceived)
            case _:
                pass
    return RtcpStats(rtt, jitter, lost, fraction, sent, in_jitter, in_lost, received)
