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
