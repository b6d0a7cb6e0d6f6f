"""The floor: a bare uvloop + websockets client holding N sessions, one message a second each.

Run beside probed against the same echo server; prints one JSON line with its RTT percentiles and
memory per session, so the benchmark can say how much probed adds on top of the bare minimum.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time

import uvloop
from websockets.asyncio.client import connect


def rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


async def session(
    url: str, interval: float, rtts: list[float], stop: asyncio.Event, up: list[int] | None = None
) -> None:
    async with connect(url, compression=None, open_timeout=60) as ws:
        if up is not None:
            up[0] += 1
        sent: dict[str, int] = {}

        async def reader() -> None:
            async for msg in ws:
                now = time.perf_counter_ns()
                start = sent.pop(str(msg), None)
                if start is not None:
                    rtts.append((now - start) / 1e6)

        task = asyncio.create_task(reader())
        await asyncio.sleep(random.uniform(0, interval))
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        seq = 0
        while not stop.is_set():
            key = f"bare-{seq}"
            seq += 1
            sent[key] = time.perf_counter_ns()
            await ws.send(key)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        task.cancel()


async def lag_sampler(lags_ms: list[float]) -> None:
    """Oversleep of a 20 ms timer, as the benchmarks sample probed's loop."""
    while True:
        start = time.perf_counter_ns()
        await asyncio.sleep(0.02)
        lags_ms.append(max(0.0, (time.perf_counter_ns() - start) / 1e6 - 20))


async def main(url: str, count: int, warmup: float, measure: float) -> None:
    before = rss_kb()
    rtts: list[float] = []
    lags: list[float] = []
    up = [0]
    stop = asyncio.Event()
    started = time.perf_counter()
    tasks = [asyncio.create_task(session(url, 1.0, rtts, stop, up)) for _ in range(count)]
    lag_task = asyncio.create_task(lag_sampler(lags))
    all_up_s: float | None = None
    # Polled: "all N sessions up" is no single event.
    while time.perf_counter() - started < warmup:
        if up[0] >= count and all_up_s is None:
            all_up_s = time.perf_counter() - started
        await asyncio.sleep(0.05)
    after = rss_kb()
    rtts.clear()
    lags.clear()
    cpu_before = time.process_time()
    await asyncio.sleep(measure)
    cpu_s = time.process_time() - cpu_before
    window = sorted(rtts)
    lag_task.cancel()
    lag_window = sorted(lags)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)

    def pct(q: float) -> float:
        return window[min(len(window) - 1, int(q * len(window)))] if window else float("nan")

    print(
        json.dumps(
            {
                "samples": len(window),
                "rtt_p50_ms": pct(0.5),
                "rtt_p99_ms": pct(0.99),
                "rss_per_session_kb": (after - before) / count,
                "sessions_up": up[0],
                "all_up_s": all_up_s,
                "loop_lag_p99_ms": lag_window[int(0.99 * len(lag_window))] if lag_window else 0.0,
                "cpu_fraction": cpu_s / measure,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    url, n, warm, meas = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    uvloop.run(main(url, n, warm, meas))
