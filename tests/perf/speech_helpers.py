"""An STT emulator in its own process, so the client's event loop measures only itself."""

from __future__ import annotations

import asyncio
import statistics
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager


@asynccontextmanager
async def emulator_process(*args: str) -> AsyncIterator[str]:
    """`probed target stt ARGS` in a child process; yields its WebSocket URL."""
    async with emulator(*args) as (url, _pid):
        yield url


@asynccontextmanager
async def emulator(*args: str) -> AsyncIterator[tuple[str, int]]:
    """`probed target stt ARGS` in a child process; yields its WebSocket URL and process id."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "probed", "--log-format", "json", "target", "stt", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError("the emulator exited before listening")
                if " listening on " in line:
                    break
        yield line.rsplit(" ", 1)[1].strip(), proc.pid
    finally:
        proc.terminate()
        await proc.wait()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary_ms(values: Sequence[float]) -> str:
    if not values:
        return "n=0"
    ms = [v * 1000 for v in values]
    spread = statistics.pstdev(ms) if len(ms) > 1 else 0.0
    return (
        f"n={len(ms)} mean={statistics.fmean(ms):.1f} sd={spread:.1f} "
        f"p50={percentile(ms, 50):.1f} p95={percentile(ms, 95):.1f} "
        f"p99={percentile(ms, 99):.1f} min={min(ms):.1f} max={max(ms):.1f} ms"
    )
