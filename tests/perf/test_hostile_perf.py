"""Figures for issue 9 (PROBED_PERF=1): memory under a ping flood, reload of 1,000 probes.

PROBED_PERF=1 .venv/bin/python -m pytest -q -s tests/perf/test_hostile_perf.py
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from probed.config import load_config
from probed.daemon import Daemon
from probed.targets.echo import EchoTarget
from tests.conftest import RunningDaemon, config, wait_until
from tests.test_hostile_peers import _flood_pings, rss_bytes, two_probes
from tests.test_reconnect import RawServer

pytestmark = pytest.mark.perf
StartDaemon = Callable[..., Awaitable[RunningDaemon]]


async def test_memory_under_a_ping_flood_stays_flat(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    async with RawServer(_flood_pings) as server:
        start = rss_bytes()
        d = await start_daemon(config(two_probes(server.url(), echo.url)))
        peak = start
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            peak = max(peak, rss_bytes())
        floods = d.count("probe_disconnects_total", probe="victim", reason="flood")
        print(
            f"\nping flood 10 s: RSS growth {(peak - start) / 2**20:.1f} MiB, {floods:.0f} floods"
        )
        assert peak - start < 100 * 2**20


def _config_text(label: str, probes: int = 1000) -> str:
    return f"global: {{labels: {{site: {label}}}, log_level: error}}\nprobes:\n" + "".join(
        f"  - name: p{i}\n    kind: echo\n    url: ws://127.0.0.1:1/x{i}\n"
        "    connection: {reconnect: {initial: 30s, max: 60s}}\n"
        for i in range(probes)
    )


async def test_reload_of_a_thousand_probes_barely_stalls_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "probed.yaml"
    path.write_text(_config_text("a"))
    d = Daemon(load_config(path), config_path=path, listen="127.0.0.1:0")
    task = asyncio.create_task(d.run(handle_signals=False))
    await wait_until(d.ready.is_set, 60)
    await asyncio.sleep(2)
    stalls: list[float] = []
    for n in range(5):
        path.write_text(_config_text(f"b{n}"))
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker(gaps: list[float] = gaps, done: asyncio.Event = done) -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        ok, message = await d.reload()
        assert ok, message
        done.set()
        await ticking
        stalls.append(max(gaps))
    started = time.perf_counter()
    await asyncio.gather(*(d.reload() for _ in range(200)))
    burst = time.perf_counter() - started
    stalls.sort()
    print(
        f"\nreload, 1,000 probes: longest loop stall median {stalls[2] * 1e3:.0f} ms "
        f"(max {stalls[-1] * 1e3:.0f} ms); 200 requests answered in {burst:.2f} s "
        f"({d.reloads} reloads in all)"
    )
    d.stop()
    await asyncio.wait_for(task, 60)
    assert os.environ.get("PROBED_PERF") == "1"
