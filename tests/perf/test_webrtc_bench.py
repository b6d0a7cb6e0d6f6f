"""WebRTC figures: audio round-trip base and spread, client buffering, and event-loop isolation.

Run with ``PROBED_PERF=1 .venv/bin/python -m pytest -s tests/perf/test_webrtc_bench.py``. The
targets run in their own processes (``probed target ...``), so the loop lag measured here is
the probe side's alone.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

pytest.importorskip("aiortc")

from probed.selfmon import LagMonitor
from probed.webrtc import EchoOutcome, WebRtcSession
from probed.webrtc.loopback import loopback_candidates

pytestmark = pytest.mark.perf
DELAY = 0.1


@pytest.fixture(autouse=True)
def _loopback() -> Iterator[None]:
    with loopback_candidates():
        yield


@asynccontextmanager
async def _target(*args: str) -> AsyncIterator[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "probed",
        "--log-format",
        "json",
        "target",
        *args,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        match = re.search(r"((?:http|ws)://\S+)", line)
        assert match, line
        yield match.group(1)
    finally:
        proc.terminate()
        await proc.wait()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(name: str, values: list[float]) -> str:
    ms = [v * 1e3 for v in values]
    return (
        f"{name:<34} n={len(ms):3d} median={statistics.median(ms):7.1f} ms "
        f"p10={_pct(ms, 0.1):7.1f} p90={_pct(ms, 0.9):7.1f} spread(p90-p10)="
        f"{_pct(ms, 0.9) - _pct(ms, 0.1):5.1f} ms"
    )


async def _roundtrips(url: str, count: int) -> tuple[list[float], list[float], int, str]:
    trips: list[float] = []
    buffered: list[float] = []
    failed = 0
    async with WebRtcSession(url, signal_interval=0.5, echo_window=0.35) as session:
        async for m in session.echoes():
            if m.outcome is EchoOutcome.OK and m.roundtrip is not None:
                trips.append(m.roundtrip - DELAY)
                if m.buffered_roundtrip is not None:
                    buffered.append(m.buffered_roundtrip - DELAY)
            else:
                failed += 1
            if m.signal_id >= count:
                break
        st = await session.stats()
    rtcp = (
        f"RTCP rtt={st.rtt and st.rtt * 1e3:.2f} ms jitter(far end)="
        f"{st.jitter and st.jitter * 1e3:.2f} ms jitter(ours)="
        f"{st.inbound_jitter and st.inbound_jitter * 1e3:.2f} ms lost={st.packets_lost}/"
        f"{st.inbound_packets_lost}"
    )
    return trips, buffered, failed, rtcp


async def test_roundtrip_base_and_spread() -> None:
    lines = []
    for mode in ("reflect", "decode"):
        args = ("whip", "--loopback-ice", "--mode", mode, "--delay", str(DELAY))
        async with _target(*args) as url:
            trips, buffered, failed, rtcp = await _roundtrips(url, 30)
        lines.append(_summary(f"{mode}: probe base (rt - delay)", trips))
        lines.append(_summary(f"{mode}: plain aiortc base", buffered))
        diffs = [b - t for t, b in zip(trips, buffered, strict=False)]
        lines.append(_summary(f"{mode}: client buffering", diffs))
        lines.append(f"{mode}: signals without a round trip: {failed}; {rtcp}")
        assert failed == 0
        assert statistics.median(trips) >= 0
    print("\n" + "\n".join(lines))


async def _ws_rtts(url: str, seconds: float) -> list[float]:
    rtts: list[float] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter_ns()
            await ws.send_str("x")
            await ws.receive()
            rtts.append((time.perf_counter_ns() - t0) / 1e9)
            await asyncio.sleep(0.02)
    return rtts


async def test_event_loop_lag_beside_webrtc_sessions() -> None:
    """Loop lag and WebSocket echo RTT with 0, 1 and 4 WebRTC sessions on the same loop."""
    lines = []
    async with (
        _target("whip", "--loopback-ice", "--mode", "reflect") as whip_url,
        _target("echo") as ws_url,
    ):
        for sessions in (0, 1, 4):
            lags: list[float] = []
            monitor = LagMonitor(0.005, interval=0.01, observe=lags.append)
            runners = [
                WebRtcSession(whip_url, signal_interval=0.5, echo_window=0.35)
                for _ in range(sessions)
            ]
            for s in runners:
                await s.connect()
            sampler = asyncio.create_task(monitor.run())
            cpu0, wall0 = time.process_time(), time.perf_counter()
            try:
                rtts = await _ws_rtts(ws_url, 10.0)
                cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
            finally:
                sampler.cancel()
                await asyncio.wait([sampler])
                for s in runners:
                    await s.close()
            lines.append(f"{sessions} WebRTC session(s): process CPU {cpu * 100:.1f}% of one core")
            lines.append(_summary(f"{sessions} WebRTC session(s): loop lag", lags))
            lines.append(
                f"{'':<34} lag p99={_pct(lags, 0.99) * 1e3:5.1f} ms max={max(lags) * 1e3:5.1f} ms"
            )
            lines.append(_summary(f"{sessions} WebRTC session(s): WS echo RTT", rtts))
            lines.append(
                f"{'':<34} RTT p99={_pct(rtts, 0.99) * 1e3:5.1f} ms max={max(rtts) * 1e3:5.1f} ms"
            )
    print("\n" + "\n".join(lines))


async def _plain_aiortc_client(url: str, count: int) -> list[float]:
    """A client made only of aiortc's public API and numpy, for comparison.

    It sends a chirp every 0.5 s on a paced track, reads the echo from aiortc's receive track
    (after its jitter buffer and decoder thread) and times the onset when the frame holding it
    is delivered, plus its offset inside that frame. It shares no code with WebRtcSession
    beyond the chirp's samples.
    """
    import fractions

    import av
    import numpy as np
    import numpy.typing as npt
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamTrack

    from probed.webrtc.signal import chirp

    sig = chirp()
    sent: list[int] = []

    class ChirpTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.n = 0
            self.t0 = time.perf_counter_ns()

        async def recv(self) -> av.AudioFrame:
            due = self.t0 + self.n * 20_000_000
            await asyncio.sleep(max(0, due - time.perf_counter_ns()) / 1e9)
            pcm = np.zeros(960, dtype=np.float32)
            k = self.n % 25  # a chirp every 25 frames, 5 frames long
            if self.n >= 25 and k < 5:
                pcm[:] = sig[k * 960 : (k + 1) * 960]
                if k == 0:
                    sent.append(time.perf_counter_ns())
            frame = av.AudioFrame.from_ndarray(
                (pcm * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = 48_000, self.n * 960
            frame.time_base = fractions.Fraction(1, 48_000)
            self.n += 1
            return frame

    pc = RTCPeerConnection()
    pc.addTransceiver(ChirpTrack(), direction="sendrecv")
    received: list[tuple[int, npt.NDArray[np.float64]]] = []
    got_track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    @pc.on("track")
    def _on_track(t: MediaStreamTrack) -> None:
        if not got_track.done():
            got_track.set_result(t)

    await pc.setLocalDescription(await pc.createOffer())
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url,
            data=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
        ) as resp,
    ):
        answer = await resp.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    track = await got_track
    try:
        while len(sent) <= count:
            frame = await track.recv()
            assert isinstance(frame, av.AudioFrame)
            mono = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(axis=1)
            received.append((time.perf_counter_ns(), mono / 32768))
    finally:
        await pc.close()
    audio = np.concatenate([pcm for _, pcm in received])
    starts = np.cumsum([0] + [len(pcm) for _, pcm in received])
    trips = []
    for t_sent in sent[:count]:
        # Search the frames delivered within 0.45 s after the send for the chirp's onset.
        idx = [i for i, (t, _) in enumerate(received) if t_sent <= t <= t_sent + 450_000_000]
        if not idx:
            continue
        lo, hi = starts[idx[0]], starts[idx[-1] + 1]
        seg = audio[lo : hi + len(sig)]
        corr = np.correlate(seg, sig, mode="valid")
        onset = lo + int(np.argmax(corr))
        frame_i = int(np.searchsorted(starts, onset, side="right") - 1)
        arrival = received[frame_i][0] + (onset - starts[frame_i]) * 1e9 / 48_000
        trips.append((arrival - t_sent) / 1e9)
    return trips


async def test_plain_aiortc_client_beside_the_probe() -> None:
    """Both clients against one decoding target at the same time: the gap is client buffering."""
    args = ("whip", "--loopback-ice", "--mode", "decode", "--delay", str(DELAY))
    async with _target(*args) as url:
        probe, plain = await asyncio.gather(_roundtrips(url, 20), _plain_aiortc_client(url, 20))
    trips, buffered, _failed, _ = probe
    plain_base = [p - DELAY for p in plain]
    print()
    print(_summary("probe base (packet arrival)", trips))
    print(_summary("probe's own buffered-path base", buffered))
    print(_summary("independent plain aiortc client", plain_base))
    assert statistics.median(plain_base) - statistics.median(trips) > 0.06
