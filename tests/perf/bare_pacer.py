"""The floor for audio pacing: a bare uvloop + websockets sender, N streams on absolute deadlines.

    python -m tests.perf.bare_pacer URL[,URL...] FIXTURE_DIR CLIP STREAMS WARMUP SECONDS BIN

Each stream connects, then sends the same prepared 20 ms chunks as the probe would (prepared before
any stream starts), on repeat, chunk i at t0 + i * 20 ms for the whole run (one schedule), with
one asyncio.sleep per chunk, and a reader that drains the replies. Prints one JSON line: the
lateness and drift figures of tests.perf.pacing_stats and the process's CPU, so the harness can
put them beside probed's from the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import sys
import time
from pathlib import Path

import uvloop
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from probed.audio import load_manifest, prepare
from tests.perf.pacing_stats import StreamRecord, summarise

PERIOD_NS = 20_000_000


async def stream(
    name: str, url: str, chunks: tuple[bytes, ...], record: list[StreamRecord]
) -> None:
    # Spread over a second, as the daemon staggers probe starts: phases differ within a period.
    await asyncio.sleep(random.uniform(0, 1))
    # No keepalive pings: the sink answers none (and the emulators need none while audio flows).
    async with connect(url, compression=None, max_size=None, ping_interval=None) as ws:

        async def drain() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for _ in ws:
                    pass

        reader = asyncio.create_task(drain())
        t0 = time.perf_counter_ns()
        rec = StreamRecord(name, t0, PERIOD_NS)
        record.append(rec)
        for i in itertools.count():
            chunk = chunks[i % len(chunks)]
            wait = t0 + i * PERIOD_NS - time.perf_counter_ns()
            if wait > 0:
                await asyncio.sleep(wait / 1e9)
            await ws.send(chunk)
            rec.sent_ns.append(time.perf_counter_ns())
        reader.cancel()


async def main(argv: list[str]) -> None:
    urls, fixtures, clip_id = argv[0].split(","), Path(argv[1]), argv[2]
    count, warmup, seconds, bin_s = int(argv[3]), float(argv[4]), float(argv[5]), float(argv[6])
    clip = load_manifest(fixtures).load(clip_id, rate=16000)
    chunks = prepare(clip, chunk_ms=20, encoding="pcm16", trailing=0.0).chunks
    records: list[StreamRecord] = []
    tasks = [
        asyncio.create_task(stream(str(i), urls[i % len(urls)], chunks, records))
        for i in range(count)
    ]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(1.0 + warmup + seconds + 0.5)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    result = summarise(records, warmup_s=warmup, seconds=seconds, bin_s=bin_s)
    result["cpu_fraction"] = cpu / wall
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1:]))
