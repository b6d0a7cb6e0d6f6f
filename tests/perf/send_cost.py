"""CPU per audio chunk handed to the socket: websockets' send() against probed.wsframe.write_now.

    python -m tests.perf.send_cost [--frames 20000]

CPU time (thread_time), not wall time, so the figure survives a busy machine. Both paths write to a
real loopback connection (tests/perf/ws_sink.py discards what arrives), one 640-byte frame (20 ms
of 16 kHz PCM) at a time, as a speech probe does; the loop runs between sends so the socket
drains as it would between chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import uvloop
from websockets.asyncio.client import connect

from probed.wsframe import write_now

CHUNK = bytes(640)


async def measure(frames: int) -> dict[str, float]:
    sink = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.perf.ws_sink", stdout=asyncio.subprocess.PIPE
    )
    assert sink.stdout is not None
    url = (await sink.stdout.readline()).decode().split()[-1]
    result: dict[str, float] = {}
    try:
        async with connect(url, compression=None, ping_interval=None) as ws:
            for name in (
                "websockets_send",
                "write_now",
                "websockets_send_again",
                "write_now_again",
            ):
                cpu = 0
                for _ in range(frames):
                    start = time.thread_time_ns()
                    if name.startswith("write_now"):
                        assert write_now(ws, CHUNK)
                    else:
                        await ws.send(CHUNK)
                    cpu += time.thread_time_ns() - start
                    await asyncio.sleep(0)
                result[f"{name}_us"] = cpu / frames / 1e3
    finally:
        sink.terminate()
        await sink.wait()
    return result


def cli() -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000)
    args = parser.parse_args()
    result = uvloop.run(measure(args.frames))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    cli()
