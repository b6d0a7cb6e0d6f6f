"""aiortc's statistics in base units: jitter from RTP clock units, loss fraction from 1/256."""

from __future__ import annotations

import datetime

import pytest

pytest.importorskip("aiortc")

from aiortc.stats import (
    RTCInboundRtpStreamStats,
    RTCOutboundRtpStreamStats,
    RTCRemoteInboundRtpStreamStats,
)

from probed.webrtc.stats import convert

NOW = datetime.datetime.now(datetime.UTC)


def _report(rtt: float | None) -> dict[str, object]:
    common = {"timestamp": NOW, "ssrc": 1, "kind": "audio", "transportId": "t"}
    return {
        "ri": RTCRemoteInboundRtpStreamStats(
            type="remote-inbound-rtp",
            id="ri",
            packetsReceived=990,
            packetsLost=10,
            jitter=960,
            roundTripTime=rtt,  # type: ignore[arg-type]  # aiortc passes None before a report
            fractionLost=64,
            **common,  # type: ignore[arg-type]
        ),
        "out": RTCOutboundRtpStreamStats(
            type="outbound-rtp",
            id="out",
            packetsSent=1000,
            bytesSent=1,
            trackId="x",
            **common,  # type: ignore[arg-type]
        ),
        "in": RTCInboundRtpStreamStats(
            type="inbound-rtp",
            id="in",
            packetsReceived=500,
            packetsLost=2,
            jitter=480,
            **common,  # type: ignore[arg-type]
        ),
    }


def test_units_are_seconds_and_ratios() -> None:
    stats = convert(_report(0.012), clock_rate=48_000)
    assert stats.rtt == 0.012
    assert stats.jitter == pytest.approx(0.020)  # 960 ticks of a 48 kHz clock
    assert stats.inbound_jitter == pytest.approx(0.010)
    assert stats.fraction_lost == 0.25
    assert (stats.packets_lost, stats.packets_sent) == (10, 1000)
    assert (stats.inbound_packets_lost, stats.inbound_packets_received) == (2, 500)


def test_narrowband_clock_and_no_report_yet() -> None:
    stats = convert(_report(None), clock_rate=8_000)
    assert stats.rtt is None  # aiortc has not matched a receiver report yet
    assert stats.jitter == pytest.approx(0.120)


def test_empty_report() -> None:
    stats = convert({}, clock_rate=48_000)
    assert stats.rtt is None and stats.jitter is None and stats.packets_sent == 0
