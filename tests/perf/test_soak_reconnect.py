"""Soak: thousands of forced reconnects must not leak tasks, file descriptors or memory.

A real daemon holds one echo session through the fault proxy; each cycle breaks it, alternately
with a TCP reset (proxy) and a 1011 close (target), and waits until the probe is usable again.
The backoff is as short as the config allows, so the cycle rate is the reconnect path's own.
Figures are printed for quoting; the run takes about a minute or two.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest

from probed import logs
from probed.metrics import ProbeMetrics
from probed.targets.echo import EchoTarget
from probed.targets.proxy import FaultProxy
from tests.conftest import RunningDaemon, bound, config, wait_until

pytestmark = pytest.mark.perf

StartDaemon = Callable[..., Awaitable[RunningDaemon]]

CYCLES = int(os.environ.get("PROBED_SOAK_CYCLES", "2000"))
WARMUP = 100
MiB = 1 << 20
# A cycle whose trigger found no session to break (the target had not registered the new one
# yet) is triggered again after this long.
RETRIGGER_AFTER = 0.5


@dataclass(frozen=True)
class Figures:
    tasks: int
    fds: int
    rss_kib: int
    traced: int


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


async def measure(steady: Callable[[], bool]) -> Figures:
    """Resources at a steady moment: session up, nothing of the previous one still closing.

    Per-connection tasks of the session just broken may take a few loop turns to finish, so
    counts are the minimum over a short window, not a single sample.
    """
    await wait_until(steady, what="steady state before measuring")
    tasks, fds = [], []
    for _ in range(20):
        if steady():
            tasks.append(len(asyncio.all_tasks()))
            fds.append(len(os.listdir("/proc/self/fd")))
        await asyncio.sleep(0.005)
    assert tasks, "never steady while sampling"
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
    return Figures(min(tasks), min(fds), rss_kib(), traced)


@pytest.fixture
def logs_to_devnull() -> Iterator[None]:
    """The daemon logs at info as in production, but not into pytest's in-memory capture,
    which would otherwise be the largest "growth" traced."""
    with open(os.devnull, "w") as sink:
        logs.configure("info", json=True, stream=sink)
        yield
        logs.configure("warning", json=True)


@pytest.mark.usefixtures("logs_to_devnull")
async def test_soak_forced_reconnects(
    echo: EchoTarget, start_daemon: StartDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        d = await start_daemon(
            config(
                f"""
probes:
  - name: soak
    kind: echo
    url: ws://127.0.0.1:{proxy.port}/ws
    interval: 50ms
    timeout: 1s
    connection:
      reconnect: {{initial: 10ms, max: 20ms, reset_after: 1h}}
"""
            )
        )
        (metrics,) = [m for m in d.daemon.exposition.probes() if m.name == "soak"]

        def ready() -> bool:
            return metrics.status.up and echo.sessions == 1

        def steady() -> bool:
            return ready() and proxy.active == 1

        retriggers = 0

        async def cycle(n: int, m: ProbeMetrics) -> None:
            nonlocal retriggers
            await wait_until(ready, what=f"session up before cycle {n}")
            down, connects = m.status.disconnects.total(), m.status.connects

            def trigger() -> None:
                if n % 2:
                    echo.close_all(1011, "soak")
                else:
                    proxy.reset()

            trigger()
            fired = time.monotonic()
            limit = fired + bound(10)
            while m.status.disconnects.total() == down:
                now = time.monotonic()
                assert now < limit, f"cycle {n}: the session never went down"
                if now - fired > RETRIGGER_AFTER:
                    retriggers += 1
                    trigger()
                    fired = now
                await asyncio.sleep(0.001)
            assert m.status.disconnects.total() == down + 1, f"cycle {n}: more than one disconnect"
            limit = time.monotonic() + bound(10)
            while not (m.status.up and m.status.connects > connects):
                assert time.monotonic() < limit, f"cycle {n}: never reconnected"
                await asyncio.sleep(0.001)

        await wait_until(ready, what="first session")
        for n in range(WARMUP):
            await cycle(n, metrics)

        tracemalloc.start()
        try:
            start = await measure(steady)
            snap_start = tracemalloc.take_snapshot()
            t0 = time.monotonic()
            for n in range(WARMUP, WARMUP + CYCLES):
                await cycle(n, metrics)
            elapsed = time.monotonic() - t0
            end = await measure(steady)
            snap_end = tracemalloc.take_snapshot()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

        total = WARMUP + CYCLES
        resets = d.count("probe_disconnects_total", probe="soak", reason="reset")
        closes = d.count("probe_disconnects_total", probe="soak", reason="server_close")
        reconnect_n = d.count("probe_reconnect_duration_seconds_count", probe="soak")
        reconnect_sum = d.count("probe_reconnect_duration_seconds_sum", probe="soak")
        growth = snap_end.compare_to(snap_start, "lineno")[:5]
        report = [
            f"soak: {CYCLES} cycles (+{WARMUP} warm-up) in {elapsed:.1f}s"
            f" = {CYCLES / elapsed:.1f} cycles/s, {retriggers} re-triggers",
            f"  tasks        {start.tasks} -> {end.tasks} ({end.tasks - start.tasks:+d})",
            f"  open fds     {start.fds} -> {end.fds} ({end.fds - start.fds:+d})",
            f"  RSS          {start.rss_kib / 1024:.1f} -> {end.rss_kib / 1024:.1f} MiB"
            f" ({(end.rss_kib - start.rss_kib) / 1024:+.1f})",
            f"  traced mem   {start.traced / MiB:.2f} -> {end.traced / MiB:.2f} MiB"
            f" ({(end.traced - start.traced) / MiB:+.2f}), peak {peak / MiB:.2f} MiB",
            f"  disconnects  reset={resets:.0f} server_close={closes:.0f};"
            f" reconnects={reconnect_n:.0f}, mean {reconnect_sum / reconnect_n * 1e3:.1f} ms",
            "  largest traced growth:",
            *(f"    {stat}" for stat in growth),
        ]
        with capsys.disabled():
            print("\n" + "\n".join(report), flush=True)

        assert resets == total // 2
        assert closes == total - total // 2
        assert d.count("probe_close_codes_total", probe="soak", code="1011") == closes
        assert d.count("probe_close_codes_total", probe="soak", code="1006") == resets
        assert reconnect_n == total
        assert d.count("probed_probe_restarts_total", probe="soak") == 0
        assert end.tasks - start.tasks <= 0, "tasks leaked"
        assert end.fds - start.fds <= 5, "file descriptors leaked"
        assert end.traced - start.traced < 5 * MiB, "memory grew"
