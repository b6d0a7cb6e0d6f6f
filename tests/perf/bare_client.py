"""The floor: a bare uvloop + websockets client holding N sessions, one message a second each.

Run beside probed against the same echo server; prints one JSON line with its RTT percentiles and
memory per session, so the benchmark can say how much probed adds on top of the bare minimum.
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
    records: list[tuple[str, int, int]] | None = None,
) -> None:
    async with connect(url, compression=None) as ws:
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


def write_records(path: str, records: list[tuple[str, int, int]]) -> None:
    with open(path, "w") as f:
        f.writelines(f"{key}\t{start_ns}\t{rtt_ns}\n" for key, start_ns, rtt_ns in records)


async def main(
    url: str, count: int, warmup: float, measure: float, records_path: str | None = None
) -> None:
    before = rss_kb()
    rtts: list[float] = []
    records: list[tuple[str, int, int]] | None = [] if records_path else None
    stop = asyncio.Event()
    go = asyncio.Event()
    if warmup < 0:
        # Measure from SIGUSR1 on: tests/perf/wire.py opens both clients' windows together.
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, go.set)
        print("waiting for SIGUSR1", flush=True)
    tasks = [
        asyncio.create_task(session(url, 1.0, rtts, stop, index=i, records=records))
        for i in range(count)
    ]
    if warmup < 0:
        await go.wait()
    else:
        await asyncio.sleep(warmup)
    after = rss_kb()
    rtts.clear()
    if records is not None:
        records.clear()
    await asyncio.sleep(measure)
    window = sorted(rtts)
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
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    url, n, warm, meas = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    # An optional fifth argument: write each measured message's key, send time and RTT (ns) there.
    uvloop.run(main(url, n, warm, meas, sys.argv[5] if len(sys.argv) > 5 else None))
