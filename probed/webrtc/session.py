"""One WebRTC audio session over WHIP: set up in phases, measure echoes, tear down cleanly.

Everything runs under deadlines: set-up has one overall timeout, every HTTP request its own,
and close() bounds the DELETE and the peer connection's shutdown, so no failure mode of the far
end leaves a task behind.

Two figures per echoed signal. ``roundtrip`` comes from decoding each RTP packet the moment it
is handed to the receiver, so it holds none of our own buffering. ``buffered_roundtrip`` finds
the same signal in the frames aiortc's receive track delivers (after its jitter buffer and
decoder thread): what a plain aiortc client would report. Their difference is our buffering.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import av
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpCodecParameters,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtcpRrPacket, RtcpSrPacket, RtpPacket
from aiortc.sdp import SessionDescription

from probed.webrtc import stats as rtc_stats
from probed.webrtc import whip
from probed.webrtc.errors import WebRtcError
from probed.webrtc.media import NoiseSource, PcmSource, ProbeAudioTrack, to_mono
from probed.webrtc.signal import (
    SAMPLE_RATE,
    Detection,
    EchoDetector,
    EchoOutcome,
    Samples,
    chirp,
)

_POLL = 0.05  # how often pending signals are checked against the clock
_MAX_UNREAD = 1000  # measurements kept for a consumer that is not reading echoes()
_SR_KEPT = 16  # sender reports remembered for matching (one goes out every 0.5-1.5 s)


@dataclass(frozen=True)
class SetupPhases:
    """Seconds spent in each step of the last set-up; ``total`` is offer to connected."""

    gather: float  # createOffer + setLocalDescription (aiortc gathers candidates here)
    signaling: float  # WHIP POST until the 201
    ice: float  # answer applied until ICE completed
    dtls: float  # ICE completed until DTLS connected
    total: float


@dataclass(frozen=True)
class EchoMeasurement:
    signal_id: int
    sent_ns: int
    outcome: EchoOutcome
    roundtrip: float | None  # seconds, signal onset out to its echo's packet arrival
    buffered_roundtrip: float | None  # seconds, as seen after aiortc's receive buffering
    correlation: float
    arrived_ns: int | None = None  # perf_counter_ns of the echo's arrival (for taint checks)

    @property
    def client_buffering(self) -> float | None:
        """Our own receive path's share of a plain aiortc client's figure."""
        if self.roundtrip is None or self.buffered_roundtrip is None:
            return None
        return self.buffered_roundtrip - self.roundtrip


def _munge_offer(sdp: str) -> str:
    # RFC 9725 requires rtcp-mux-only in each bundled section; aiortc writes only rtcp-mux.
    return sdp.replace("a=rtcp-mux\r\n", "a=rtcp-mux\r\na=rtcp-mux-only\r\n")


def _audio_codecs(answer: str) -> dict[int, RTCRtpCodecParameters]:
    parsed = SessionDescription.parse(answer)
    return {
        c.payloadType: c
        for m in parsed.media
        if m.kind == "audio"
        for c in m.rtp.codecs
        if c.payloadType is not None
    }


def _codec_capabilities(names: Sequence[str]) -> list[RTCRtpCodecCapability]:
    """Offer only these (e.g. "audio/PCMU"), in this order; aiortc's default offers Opus,
    G.722, PCMU and PCMA."""
    if not names:
        return []
    available = RTCRtpSender.getCapabilities("audio").codecs
    wanted = [n.lower() for n in names]
    chosen = [c for name in wanted for c in available if c.mimeType.lower() == name]
    if not chosen:
        raise ValueError(f"none of the codecs {list(names)} is supported by aiortc")
    return chosen


def _answer_sends_audio(answer: str) -> bool:
    parsed = SessionDescription.parse(answer)
    return any(
        m.kind == "audio" and m.direction in (None, "sendrecv", "sendonly") for m in parsed.media
    )


class _Progress:
    """Set-up state from the peer's events: which phase we are in and what broke it."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        fail: Callable[[WebRtcError], None],
        spawn: Callable[[Any], None],
        drain: Callable[[MediaStreamTrack], Any],
    ) -> None:
        self.phase = "gather"
        self.marks: dict[str, int] = {}
        self.ice_done = asyncio.Event()
        self.connected = asyncio.Event()
        self.broken: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._next = {"gather": "signaling", "signaling": "ice", "ice": "dtls", "dtls": "up"}

        @pc.on("iceconnectionstatechange")
        def _ice_state() -> None:
            if pc.iceConnectionState == "completed":
                self.ice_done.set()
            elif pc.iceConnectionState == "failed":
                self._break("ice_failed")

        @pc.on("connectionstatechange")
        def _state() -> None:
            state = pc.connectionState
            if state == "connected":
                self.connected.set()
            elif state in ("failed", "closed"):
                if self.connected.is_set():
                    fail(WebRtcError("connection_lost", f"connection state {state}"))
                else:
                    self._break("dtls_failed" if self.ice_done.is_set() else "ice_failed")

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            spawn(drain(track))

    def _break(self, reason: str) -> None:
        if not self.broken.done():
            self.broken.set_result(reason)

    def mark(self, phase: str) -> None:
        self.marks[phase] = time.perf_counter_ns()
        self.phase = self._next[phase]

    async def until(self, event: asyncio.Event) -> None:
        waiter: asyncio.Future[Any] = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait([waiter, self.broken], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not event.is_set():
            raise WebRtcError(self.broken.result())


class WebRtcSession:
    """An aiortc peer that publishes audio over WHIP and measures what comes back.

    One instance is one connection attempt: after close() (or a failed connect(), which closes)
    make a new one. Use as ``async with WebRtcSession(url) as s:`` or call ``connect()`` /
    ``close()``.

    - ``connect()`` returns SetupPhases or raises WebRtcError (bounded ``reason``).
    - ``echoes()`` yields one EchoMeasurement per signal sent (OK with a round trip, or
      NO_ECHO / WEAK_MATCH / NO_MEDIA without one); it ends on close() and raises WebRtcError
      when the session is lost (``connection_lost``, ``media_stalled``). ``wait_failed()``
      waits for the same failure without consuming echoes.
    - ``on_rtt`` gets each raw RTCP round trip; ``stats()`` gives aiortc's figures in seconds.
    - ``on_send_lateness`` gets how late each 20 ms frame left against its deadline.
    - ``echoing`` is False when the far end answered recvonly (a plain ingest): then no signal
      is sent and only set-up and RTCP are measured.

    ``echo_window`` bounds the round trip that can be measured: a later echo is NO_ECHO.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        token: str | None = None,
        ice_servers: Sequence[RTCIceServer] = (),
        source: PcmSource | None = None,
        signal: Samples | None = None,
        signal_interval: float = 1.0,
        echo_window: float = 0.8,
        gate: float = 0.6,
        connect_timeout: float = 10.0,
        request_timeout: float = 5.0,
        media_timeout: float = 3.0,
        measure_buffered: bool = True,
        codecs: Sequence[str] = (),
        http: aiohttp.ClientSession | None = None,
        on_send_lateness: Callable[[float], None] = lambda _s: None,
        on_rtt: Callable[[float], None] = lambda _s: None,
    ) -> None:
        self._endpoint = endpoint
        self._token = token
        self._ice_servers = list(ice_servers)
        self._signal = chirp() if signal is None else signal
        if echo_window + len(self._signal) / 48_000 >= signal_interval:
            raise ValueError("echo_window plus the signal must fit inside signal_interval")
        self._window = echo_window
        self._gate = gate
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._media_timeout = media_timeout
        self._measure_buffered = measure_buffered
        self._codec_preference = _codec_capabilities(codecs)
        self._own_http = http is None
        self._on_rtt = on_rtt
        self._http = http
        self._track = ProbeAudioTrack(
            source or NoiseSource(),
            self._signal,
            interval=signal_interval,
            on_signal=self._signal_sent,
            on_lateness=on_send_lateness,
        )
        self._pc: RTCPeerConnection | None = None
        self._answer: whip.WhipAnswer | None = None
        self._codecs: dict[int, RTCRtpCodecParameters] = {}
        self._decoders: dict[int, Any] = {}
        self._resamplers: dict[int, av.AudioResampler] = {}
        self._clock_rate = 48_000
        self._direct: EchoDetector | None = None
        self._buffered: EchoDetector | None = None
        # The latest signals sent, replayed into a detector made after they left (detectors
        # are made on the first audio to arrive).
        self._sent: list[tuple[int, int]] = []
        self._direct_done: dict[int, Detection] = {}
        self._buffered_done: dict[int, Detection] = {}
        self._results: asyncio.Queue[EchoMeasurement | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._failure: WebRtcError | None = None
        self._failed = asyncio.Event()
        self._closed = False
        self.last_packet_ns: int | None = None
        self.packets_tapped = 0
        self.rtt_samples = 0
        self._sr_sent: dict[int, int] = {}  # our sender reports: LSR -> perf_counter_ns sent
        self.delete_result: str | None = "not_sent"
        self.echoing = True  # False when the far end answered recvonly (set by connect)

    # -- set-up -------------------------------------------------------------------------------

    async def __aenter__(self) -> WebRtcSession:
        await self.connect()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def session_url(self) -> str | None:
        return self._answer.session_url if self._answer else None

    @property
    def failure(self) -> WebRtcError | None:
        return self._failure

    @property
    def track(self) -> ProbeAudioTrack:
        return self._track

    async def connect(self) -> SetupPhases:
        """Offer, POST, apply the answer, wait for ICE and DTLS; or raise WebRtcError."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers))
        self._pc = pc
        progress = _Progress(pc, self._fail, self._spawn, self._drain)
        transceiver = pc.addTransceiver(self._track, direction="sendrecv")
        if self._codec_preference:
            transceiver.setCodecPreferences(self._codec_preference)
        self._tap(transceiver.receiver)
        self._tap_rtcp(transceiver.sender)
        t0 = time.perf_counter_ns()
        try:
            async with asyncio.timeout(self._connect_timeout):
                await pc.setLocalDescription(await pc.createOffer())
                progress.mark("gather")
                async with asyncio.timeout(self._request_timeout):
                    assert self._http is not None
                    self._answer = await whip.post_offer(
                        self._http,
                        self._endpoint,
                        _munge_offer(pc.localDescription.sdp),
                        token=self._token,
                    )
                progress.mark("signaling")
                await self._apply_answer(pc, self._answer.sdp)
                await progress.until(progress.ice_done)
                progress.mark("ice")
                await progress.until(progress.connected)
                progress.mark("dtls")
        except TimeoutError:
            await self._abort()
            phase = progress.phase
            reason = {
                "gather": "gather_timeout",
                "ice": "ice_timeout",
                "dtls": "dtls_timeout",
            }.get(phase, "timeout")
            raise WebRtcError(reason, f"no progress in phase {phase}") from None
        except BaseException:
            await self._abort()
            raise
        self._spawn(self._watch())
        marks = progress.marks
        return SetupPhases(
            gather=(marks["gather"] - t0) / 1e9,
            signaling=(marks["signaling"] - marks["gather"]) / 1e9,
            ice=(marks["ice"] - marks["signaling"]) / 1e9,
            dtls=(marks["dtls"] - marks["ice"]) / 1e9,
            total=(marks["dtls"] - t0) / 1e9,
        )

    async def _apply_answer(self, pc: RTCPeerConnection, sdp: str) -> None:
        try:
            self._codecs = _audio_codecs(sdp)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as exc:
            # aiortc's SDP handling raises ValueError, KeyError, IndexError, AttributeError and
            # even AssertionError on mangled answers (fuzzed): all are the far end's fault.
            raise WebRtcError("bad_answer", type(exc).__name__) from exc
        if not self._codecs:
            raise WebRtcError("bad_answer", "no audio codec accepted")
        # A plain WHIP ingest answers recvonly: nothing comes back, so no signal is sent, no
        # echo expected and silence is not a stall; set-up and RTCP are still measured.
        self.echoing = _answer_sends_audio(sdp)
        self._track.enabled = self.echoing
        self._clock_rate = next(iter(self._codecs.values())).clockRate or 48_000

    # -- receive paths ------------------------------------------------------------------------

    def _tap(self, receiver: Any) -> None:
        """See every RTP packet as aiortc's transport hands it over, before the jitter buffer."""
        original = receiver._handle_rtp_packet

        async def tapped(packet: RtpPacket, arrival_time_ms: int) -> None:
            arrived = time.perf_counter_ns()
            self._on_packet(packet, arrived)
            await original(packet, arrival_time_ms=arrival_time_ms)

        # aiortc has no public hook for received packets; the transport looks this up per packet.
        setattr(receiver, "_handle_rtp_packet", tapped)  # noqa: B010

    def _tap_rtcp(self, sender: Any) -> None:
        """Each RTCP report block on our stream is one round-trip sample (RFC 3550 6.4.1).

        aiortc's own roundTripTime is an EWMA of these; a histogram wants the samples. The
        formula's "LSR" is taken as our sender report's send time on our own monotonic clock:
        aiortc stamps a report with the NTP time of the last RTP packet, up to a packet time
        before the report leaves, so LSR itself would add up to 20 ms to every sample.
        """
        original_receive = sender._handle_rtcp_packet
        original_send = sender._send_rtcp

        async def received(packet: Any) -> None:
            try:
                self._rtcp_rtt(packet, sender._ssrc, time.perf_counter_ns())
            except Exception as exc:
                self._fail(WebRtcError("internal_error", type(exc).__name__))
            await original_receive(packet)

        async def sending(packets: list[Any]) -> None:
            now = time.perf_counter_ns()
            for packet in packets:
                if isinstance(packet, RtcpSrPacket):
                    lsr = (packet.sender_info.ntp_timestamp >> 16) & 0xFFFFFFFF
                    self._sr_sent[lsr] = now
                    while len(self._sr_sent) > _SR_KEPT:
                        del self._sr_sent[next(iter(self._sr_sent))]
            await original_send(packets)

        setattr(sender, "_handle_rtcp_packet", received)  # noqa: B010
        setattr(sender, "_send_rtcp", sending)  # noqa: B010

    def _rtcp_rtt(self, packet: Any, ssrc: int, arrived_ns: int) -> None:
        if not isinstance(packet, RtcpRrPacket | RtcpSrPacket):
            return
        for report in packet.reports:
            sent_ns = self._sr_sent.get(report.lsr) if report.ssrc == ssrc else None
            if sent_ns is None:
                continue  # lsr 0 (no report from us seen yet) or one we no longer remember
            rtt = (arrived_ns - sent_ns) / 1e9 - report.dlsr / 65536
            # DLSR has a resolution of 1/65536 s: a loopback sample may come out a hair below 0.
            if rtt > -0.001:
                self.rtt_samples += 1
                self._on_rtt(max(rtt, 0.0))

    def _on_packet(self, packet: RtpPacket, arrived: int) -> None:
        self.last_packet_ns = arrived
        self.packets_tapped += 1
        try:
            self._measure_packet(packet, arrived)
        except Exception as exc:
            # Raising here would end aiortc's receive loop, i.e. the whole session.
            self._fail(WebRtcError("internal_error", type(exc).__name__))

    def _measure_packet(self, packet: RtpPacket, arrived: int) -> None:
        codec = self._codecs.get(packet.payload_type)
        if codec is None or not packet.payload:
            return
        decoder = self._decoders.get(packet.payload_type)
        if decoder is None:
            decoder = self._decoders[packet.payload_type] = get_decoder(codec)
        try:
            frames = decoder.decode(JitterFrame(data=packet.payload, timestamp=packet.timestamp))
        except Exception:
            return  # a corrupt packet is lost audio, not a crash
        for frame in frames:
            self._direct = self._feed(self._direct, frame, arrived)

    async def _drain(self, track: MediaStreamTrack) -> None:
        # Consumed even when not measured: aiortc's track queue grows without bound otherwise.
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if self._measure_buffered:
                    try:
                        self._buffered = self._feed(self._buffered, frame, time.perf_counter_ns())
                    except Exception as exc:
                        self._fail(WebRtcError("internal_error", type(exc).__name__))
                        self._measure_buffered = False

    def _feed(self, detector: EchoDetector | None, frame: Any, arrived: int) -> EchoDetector:
        if detector is None:
            detector = EchoDetector(
                self._signal, window=self._window, gate=self._gate, sample_rate=SAMPLE_RATE
            )
            for signal_id, sent_ns in self._sent:
                detector.expect(signal_id, sent_ns)
        if frame.sample_rate != SAMPLE_RATE:
            # Narrowband codecs (G.711 at 8 kHz, G.722 at 16 kHz) are searched at 48 kHz too:
            # at 8 kHz the peak can sit half a sample off, which costs a 3 kHz chirp most of
            # its correlation. The resampler's own delay is about a millisecond.
            resampler = self._resamplers.get(id(detector))
            if resampler is None:
                resampler = self._resamplers[id(detector)] = av.AudioResampler(
                    format="s16", layout="mono", rate=SAMPLE_RATE
                )
            for converted in resampler.resample(frame):
                detector.push(to_mono(converted), arrived)
            return detector
        detector.push(to_mono(frame), arrived)
        return detector

    def _signal_sent(self, signal_id: int, sent_ns: int) -> None:
        self._sent.append((signal_id, sent_ns))
        del self._sent[:-8]
        for detector in (self._direct, self._buffered):
            if detector is not None:
                detector.expect(signal_id, sent_ns)

    # -- results ------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Resolve pending signals on the clock and notice a far end that stopped sending."""
        connected_ns = time.perf_counter_ns()
        while True:
            await asyncio.sleep(_POLL)
            now = time.perf_counter_ns()
            try:
                self._collect(now)
            except Exception as exc:
                self._fail(WebRtcError("internal_error", type(exc).__name__))
                return
            if not self.echoing:
                continue
            last = self.last_packet_ns
            quiet_since = last if last is not None else connected_ns
            if (now - quiet_since) / 1e9 > self._media_timeout:
                self._fail(WebRtcError("media_stalled", "no RTP from the far end"))
                return

    def _collect(self, now: int) -> None:
        if self._direct is not None:
            for d in self._direct.poll(now):
                self._direct_done[d.signal_id] = d
        if self._buffered is not None:
            for d in self._buffered.poll(now):
                self._buffered_done[d.signal_id] = d
        for signal_id in sorted(self._direct_done):
            direct = self._direct_done[signal_id]
            buffered = self._buffered_done.get(signal_id)
            # The buffered path lags ours by its buffering; give up on it a window later.
            lagging = now < direct.sent_ns + int((2 * self._window + 1.0) * 1e9)
            if self._measure_buffered and buffered is None and lagging:
                break
            del self._direct_done[signal_id]
            self._buffered_done.pop(signal_id, None)
            if self._results.qsize() >= _MAX_UNREAD:
                self._results.get_nowait()  # nobody is reading: keep the newest
            self._results.put_nowait(
                EchoMeasurement(
                    signal_id=signal_id,
                    sent_ns=direct.sent_ns,
                    outcome=direct.outcome,
                    roundtrip=direct.roundtrip,
                    buffered_roundtrip=buffered.roundtrip if buffered else None,
                    correlation=direct.correlation,
                    arrived_ns=direct.arrived_ns,
                )
            )
        # A buffered result whose direct twin was never expected would otherwise stay forever.
        for stale in [k for k, v in self._buffered_done.items() if now - v.sent_ns > 10**10]:
            del self._buffered_done[stale]

    async def echoes(self) -> AsyncIterator[EchoMeasurement]:
        while True:
            if self._results.empty() and self._failure is not None:
                raise self._failure
            item = await self._results.get()
            if item is None:
                if self._failure is not None:
                    raise self._failure
                return
            yield item

    async def stats(self) -> rtc_stats.RtcpStats:
        if self._pc is None:
            raise RuntimeError("not connected")
        report = await self._pc.getStats()
        return rtc_stats.convert(dict(report), self._clock_rate)

    async def wait_failed(self) -> WebRtcError:
        await self._failed.wait()
        assert self._failure is not None
        return self._failure

    def _fail(self, error: WebRtcError) -> None:
        if self._failure is None and not self._closed:
            self._failure = error
            self._failed.set()
            self._results.put_nowait(None)

    # -- tear-down ----------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.ensure_future(coro))

    async def _abort(self) -> None:
        with contextlib.suppress(Exception):
            await self.close()

    async def close(self) -> None:
        """DELETE the WHIP session and close the peer; bounded, idempotent, never raises."""
        if self._closed:
            return
        self._closed = True
        self._results.put_nowait(None)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self._answer is not None and self._http is not None:
            try:
                async with asyncio.timeout(self._request_timeout):
                    self.delete_result = await whip.delete_session(
                        self._http, self._answer.session_url, token=self._token
                    )
            except TimeoutError:
                self.delete_result = "timeout"
        if self._pc is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._request_timeout):
                    await self._pc.close()
        if self._own_http and self._http is not None:
            await self._http.close()
