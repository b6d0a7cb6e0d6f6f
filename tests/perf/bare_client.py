"""The floor: a bare uvloop + websockets client holding N sessions, one message a second each.

Run beside probed against the same echo server; prints one JSON line with its RTT percentiles,
memory per session, time to all up, loop lag and CPU, so the benchmarks can say how much probed
adds on top of the bare minimum.

    python -m tests.perf.bare_client URL COUNT WARMUP MEASURE [RECORDS]

WARMUP -1 waits for SIGUSR1 to open the measuring window (tests/perf/wire.py); RECORDS, if given,
is a file for each measured message's key, send time and RTT in ns.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import signal
import sys
import time

import uvloop
from websockets.asyncio.client import connect


def rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


async def session(
    url: str,
    interval: float,
    rtts: list[float],
    stop: asyncio.Event,
    *,
    index: int = 0,
    up: list[int] | None = None,
    records: list[tuple[str, int, int]] | None = None,
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
                    if records is not None:  # per message, for the wire harness (wire.py)
                        records.append((str(msg), start, now - start))

        task = asyncio.create_task(reader())
        await asyncio.sleep(random.uniform(0, interval))
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        seq = 0
        while not stop.is_set():
            # The session's index makes every message unique on the wire (tests/perf/wire.py).
            key = f"bare-{index}-{seq}"
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


def write_records(path: str, records: list[tuple[str, int, int]]) -> None:
    with open(path, "w") as f:
        f.writelines(f"{key}\t{start_ns}\t{rtt_ns}\n" for key, start_ns, rtt_ns in records)


async def main(
    url: str, count: int, warmup: float, measure: float, records_path: str | None = None
) -> None:
    before = rss_kb()
    rtts: list[float] = []
    lags: list[float] = []
    records: list[tuple[str, int, int]] | None = [] if records_path else None
    up = [0]
    stop = asyncio.Event()
    go = asyncio.Event()
    if warmup < 0:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, go.set)
        print("waiting for SIGUSR1", flush=True)
    started = time.perf_counter()
    tasks = [
        asyncio.create_task(session(url, 1.0, rtts, stop, index=i, up=up, records=records))
        for i in range(count)
    ]
    lag_task = asyncio.create_task(lag_sampler(lags))
    all_up_s: float | None = None
    # Polled: "all N sessions up" is no single event.
    while (time.perf_counter() - started < warmup) if warmup >= 0 else not go.is_set():
        if up[0] >= count and all_up_s is None:
            all_up_s = time.perf_counter() - started
        await asyncio.sleep(0.05)
    after = rss_kb()
    rtts.clear()
    lags.clear()
    if records is not None:
        records.clear()
    cpu_before = time.process_time()
    await asyncio.sleep(measure)
    cpu_s = time.process_time() - cpu_before
    window = sorted(rtts)
    lag_task.cancel()
    lag_window = sorted(lags)
    if records_path and records is not None:
        write_records(records_path, records)
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
    uvloop.run(main(url, n, warm, meas, sys.argv[5] if len(sys.argv) > 5 else None))
