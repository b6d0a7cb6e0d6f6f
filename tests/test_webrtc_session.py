"""WebRtcSession against the reference WHIP target: real aiortc peers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("aiortc")

from probed.targets.whip import Answer, EchoMode, WhipTarget
from probed.webrtc import EchoMeasurement, EchoOutcome, WebRtcError, WebRtcSession
from probed.webrtc.loopback import loopback_candidates
from tests.conftest import bound


def _session(url: str, **extra: Any) -> WebRtcSession:
    # A short cycle keeps the suite fast: one signal every 0.8 s, its echo looked for 0.6 s.
    return WebRtcSession(url, signal_interval=0.8, echo_window=0.6, **extra)


@pytest.fixture(autouse=True)
def _loopback() -> Iterator[None]:
    with loopback_candidates():
        yield


@pytest.fixture
async def target() -> AsyncIterator[WhipTarget]:
    async with WhipTarget(delay=0.1, mode=EchoMode.REFLECT) as t:
        yield t


async def _echoes(session: WebRtcSession, count: int) -> list[EchoMeasurement]:
    out: list[EchoMeasurement] = []
    async with asyncio.timeout(bound(2 + count * 2)):
        async for m in session.echoes():
            out.append(m)
            if len(out) == count:
                break
    return out


async def test_reflected_echo_reports_the_added_delay_plus_a_small_base(
    target: WhipTarget,
) -> None:
    async with _session(target.url) as session:
        echoes = await _echoes(session, 3)
    assert [m.outcome for m in echoes] == [EchoOutcome.OK] * 3
    trips = [m.roundtrip for m in echoes if m.roundtrip is not None]
    assert len(trips) == 3
    # The delay is a floor no measurement can beat; the base on loopback is a few ms (generous
    # bound: the machine is shared).
    assert all(0.1 <= t < 0.1 + bound(0.08) for t in trips), trips
    # A plain aiortc client (after its jitter buffer) sees more than the packet-arrival figure.
    for m in echoes:
        assert m.client_buffering is not None and m.client_buffering > 0
    assert target.sessions == 0 and target.deletes == 1


async def test_decoding_far_end_adds_its_buffering() -> None:
    async with (
        WhipTarget(delay=0.1, mode=EchoMode.DECODE) as decode,
        _session(decode.url) as session,
    ):
        echoes = await _echoes(session, 2)
    trips = [m.roundtrip for m in echoes if m.roundtrip is not None]
    assert len(trips) == 2
    # aiortc's receive path (jitter buffer, decoder thread) at the far end adds tens of ms.
    assert statistics.median(trips) > 0.12


async def test_setup_phases_and_rtcp_stats_in_seconds(target: WhipTarget) -> None:
    samples: list[float] = []
    async with _session(target.url, on_rtt=samples.append) as session:
        await _echoes(session, 1)
        # aiortc sends a report every 0.5-1.5 s; the RTT stays None until one has come back.
        async with asyncio.timeout(bound(10)):
            while (stats := await session.stats()).rtt is None:  # noqa: ASYNC110 - no event
                await asyncio.sleep(0.1)
    assert 0 <= stats.rtt < bound(0.5)
    # The raw report samples behind aiortc's smoothed figure, one per report block.
    assert samples and all(0 <= rtt < bound(0.5) for rtt in samples)
    assert stats.jitter is not None and 0 <= stats.jitter < bound(0.1)
    assert stats.inbound_jitter is not None and 0 <= stats.inbound_jitter < bound(0.1)
    assert stats.packets_lost == 0 and stats.inbound_packets_lost == 0
    assert stats.packets_sent > 0 and stats.inbound_packets_received > 0


async def test_connect_returns_phases_that_add_up(target: WhipTarget) -> None:
    session = _session(target.url)
    try:
        phases = await session.connect()
    finally:
        await session.close()
    # No ICE servers by default: host candidates only, nothing leaves the machine.
    assert session._pc is not None
    candidates = [
        line for line in session._pc.localDescription.sdp.splitlines() if "a=candidate" in line
    ]
    assert candidates and all("typ host" in c and "127.0.0.1" in c for c in candidates)
    parts = phases.gather + phases.signaling + phases.ice + phases.dtls
    assert parts == pytest.approx(phases.total, abs=1e-6)
    assert all(p >= 0 for p in (phases.gather, phases.signaling, phases.ice, phases.dtls))
    assert session.delete_result is None


async def test_echo_off_reports_no_round_trip(target: WhipTarget) -> None:
    target.echo_enabled = False
    async with _session(target.url) as session:
        echoes = await _echoes(session, 2)
    assert [m.outcome for m in echoes] == [EchoOutcome.NO_ECHO] * 2
    assert all(m.roundtrip is None and m.buffered_roundtrip is None for m in echoes)


async def test_muted_far_end_is_media_stalled(target: WhipTarget) -> None:
    async with _session(target.url, media_timeout=0.5) as session:
        await _echoes(session, 1)
        target.muted = True
        async with asyncio.timeout(bound(10)):
            error = await session.wait_failed()
        assert error.reason == "media_stalled"
        with pytest.raises(WebRtcError, match="media_stalled"):
            async for _ in session.echoes():
                pass


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Answer.MALFORMED, "bad_answer"),
        (Answer.MANGLED, "bad_answer"),
        (Answer.NO_LOCATION, "no_location"),
    ],
)
async def test_bad_answers_are_classified(target: WhipTarget, fault: Answer, reason: str) -> None:
    target.answer = fault
    session = _session(target.url)
    with pytest.raises(WebRtcError) as caught:
        await session.connect()
    assert caught.value.reason == reason
    await session.close()  # idempotent after a failed connect
    # Without a Location the client cannot DELETE: the far end keeps the orphan until it
    # times it out (the reference target until it stops).
    assert target.sessions == (1 if fault is Answer.NO_LOCATION else 0)


async def test_refusal_is_http_status(target: WhipTarget) -> None:
    target.refuse(503, retry_after=3)
    with pytest.raises(WebRtcError) as caught:
        await _session(target.url).connect()
    assert caught.value.reason == "http_503"


async def test_peer_that_never_connects_fails_within_the_deadline(target: WhipTarget) -> None:
    target.answer = Answer.NEVER_CONNECTS
    session = _session(target.url, connect_timeout=2.0)
    async with asyncio.timeout(bound(10)):
        with pytest.raises(WebRtcError) as caught:
            await session.connect()
    assert caught.value.reason in ("ice_failed", "ice_timeout")


async def test_nothing_listening_is_refused() -> None:
    async with WhipTarget() as gone:
        url = gone.url
    with pytest.raises(WebRtcError) as caught:
        await _session(url).connect()
    assert caught.value.reason == "refused"


async def test_bearer_token_is_sent() -> None:
    async with WhipTarget(token="s3cret", mode=EchoMode.REFLECT) as guarded:
        with pytest.raises(WebRtcError) as caught:
            await _session(guarded.url).connect()
        assert caught.value.reason == "http_401"
        async with _session(guarded.url, token="s3cret") as session:
            assert session.session_url is not None
        assert guarded.deletes == 1


async def test_far_end_that_never_sends_media_is_media_stalled(target: WhipTarget) -> None:
    target.muted = True
    async with _session(target.url, media_timeout=0.5) as session:
        async with asyncio.timeout(bound(10)):
            error = await session.wait_failed()
    assert error.reason == "media_stalled"
    assert session.packets_tapped == 0


async def test_plain_ingest_is_measured_without_echo() -> None:
    async with WhipTarget(mode=EchoMode.NONE) as ingest:
        async with _session(ingest.url, media_timeout=0.3) as session:
            assert not session.echoing
            async with asyncio.timeout(bound(10)):
                while (stats := await session.stats()).rtt is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            assert session.failure is None  # silence from a recvonly peer is not a stall
        assert stats.packets_sent > 0 and stats.inbound_packets_received == 0
        assert ingest.deletes == 1


@pytest.mark.parametrize(
    ("mode", "codec"),
    [
        (EchoMode.REFLECT, "audio/PCMU"),
        (EchoMode.REFLECT, "audio/G722"),
        (EchoMode.DECODE, "audio/PCMU"),  # the target resamples 8 kHz frames for its encoder
    ],
)
async def test_narrowband_codec_echo_is_found(mode: EchoMode, codec: str) -> None:
    async with (
        WhipTarget(delay=0.1, mode=mode) as target,
        _session(target.url, codecs=[codec]) as session,
    ):
        [echo] = await _echoes(session, 1)
    assert echo.outcome is EchoOutcome.OK
    assert echo.correlation > 0.9
    assert echo.roundtrip is not None and 0.1 <= echo.roundtrip < 0.1 + bound(0.3)


def test_unknown_codec_preference_is_refused() -> None:
    with pytest.raises(ValueError, match="codecs"):
        _session("http://127.0.0.1:9/whip", codecs=["audio/unknown"])


async def test_far_end_closing_the_peer_is_connection_lost(target: WhipTarget) -> None:
    async with _session(target.url, media_timeout=5.0) as session:
        await _echoes(session, 1)
        await target.drop_sessions()
        async with asyncio.timeout(bound(10)):
            error = await session.wait_failed()
    assert error.reason == "connection_lost"
    assert session.delete_result == "http_404"  # the far end had already forgotten it


async def test_garbage_payloads_from_the_far_end_are_survived(target: WhipTarget) -> None:
    target.garble = True
    async with _session(target.url) as session:
        echoes = await _echoes(session, 2)
        assert session.failure is None
    assert all(m.outcome is not EchoOutcome.OK and m.roundtrip is None for m in echoes)


async def test_wrong_dtls_fingerprint_is_dtls_failed(target: WhipTarget) -> None:
    target.answer = Answer.WRONG_FINGERPRINT
    session = _session(target.url, connect_timeout=5.0)
    async with asyncio.timeout(bound(15)):
        with pytest.raises(WebRtcError) as caught:
            await session.connect()
    assert caught.value.reason == "dtls_failed"
