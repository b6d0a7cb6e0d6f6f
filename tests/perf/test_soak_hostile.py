"""Soak under hostility: 100 probes, churn, faults on a schedule; resources must stay flat.

80 probes churn against the echo target (a new session every 2 s), which also closes every
session with 1011 every 5 s; 10 probes face a ping flood that never reads; 10 get replies nested
200,000 deep. The far ends run in a process of their own (tests/perf/soak_servers.py), so the RSS,
tasks and descriptors sampled here are the daemon's (and pytest's, which stays put). Printed as a
table; the first minute (sessions dialling, the heap freezing, histories filling) is warm-up.

    PROBED_PERF=1 PROBED_SOAK_MINUTES=30 .venv/bin/python -m pytest -q -s \
        tests/perf/test_soak_hostile.py
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest

from probed import logs
from tests.conftest import RunningDaemon, bound, config
from tests.test_hostile_peers import rss_bytes

pytestmark = pytest.mark.perf
StartDaemon = Callable[..., Awaitable[RunningDaemon]]
MINUTES = float(os.environ.get("PROBED_SOAK_MINUTES", "30"))
SAMPLE_EVERY = max(5.0, MINUTES * 60 / 30)
WARMUP_S = min(60.0, MINUTES * 60 / 4)


@pytest.fixture
def logs_to_devnull() -> Iterator[None]:
    # Production's info level, into nothing: pytest's capture would be the largest "growth".
    with open(os.devnull, "w") as sink:
        logs.configure("info", json=True, stream=sink)
        yield
        logs.configure("warning", json=True)


@pytest.fixture
async def far_ends() -> AsyncIterator[dict[str, str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.perf.soak_servers", stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), bound(30))
    try:
        yield json.loads(line)
    finally:
        proc.kill()
        await proc.wait()


def entries(prefix: str, url: str, count: int, extra: str = "") -> str:
    return "".join(
        f"  - {{name: {prefix}{i}, kind: echo, url: '{url}', interval: 200ms, timeout: 1s,"
        f" connection: {{reconnect: {{initial: 500ms, max: 2s}}{extra}}}}}\n"
        for i in range(count)
    )


@pytest.mark.usefixtures("logs_to_devnull")
async def test_soak_hostile(far_ends: dict[str, str], start_daemon: StartDaemon) -> None:
    text = (
        "global: {log_level: info}\nprobes:\n"
        + entries("churn", far_ends["echo"], 80, ", churn: 2s")
        + entries("flood", far_ends["flood"], 10)
        + entries("deep", far_ends["deep"], 10)
    )
    d = await start_daemon(config(text))
    rows: list[tuple[float, float, int, int, float, float]] = []
    started = time.monotonic()
    next_fault = started + 5
    next_sample = started + 10

    def received() -> float:
        return sum(d.count("probe_messages_received_total", probe=f"churn{i}") for i in range(80))

    async with aiohttp.ClientSession() as http:
        while time.monotonic() - started < MINUTES * 60:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if now >= next_fault:
                fault = {"close": 1011, "reason": "soak fault"}
                async with http.post(far_ends["echo_control"], json=fault) as resp:
                    assert resp.status == 200
                next_fault = now + 5
            if now >= next_sample:
                floods = sum(
                    d.count("probe_disconnects_total", probe=f"flood{i}", reason="flood")
                    for i in range(10)
                )
                rows.append(
                    (
                        now - started,
                        rss_bytes() / 2**20,
                        len(asyncio.all_tasks()),
                        len(os.listdir("/proc/self/fd")),
                        received(),
                        floods,
                    )
                )
                next_sample = now + SAMPLE_EVERY
    print("\n  t (s) | RSS MiB | tasks | fds | churn replies | floods")
    for t, rss, tasks, fds, got, floods in rows:
        print(f"{t:7.0f} | {rss:7.1f} | {tasks:5d} | {fds:3d} | {got:13.0f} | {floods:6.0f}")
    # Sessions come and go with the fault schedule, so counts swing between samples; what must
    # not happen is a rising ceiling. Compare the peaks of the first and last halves after warm-up.
    steady = [r for r in rows if r[0] >= WARMUP_S]
    half = max(1, len(steady) // 2)
    first, last = steady[:half], steady[-half:]
    print(
        f"RSS peak first half {max(r[1] for r in first):.1f} MiB, "
        f"last half {max(r[1] for r in last):.1f} MiB"
    )
    assert max(r[1] for r in last) - max(r[1] for r in first) < 16, "RSS kept growing"
    assert max(r[2] for r in last) <= max(r[2] for r in first) + 50, "tasks kept growing"
    assert max(r[3] for r in last) <= max(r[3] for r in first) + 20, "descriptors grew"
    assert rows[-1][4] > rows[0][4], "the churning probes stopped measuring"
    assert d.count("probed_probe_restarts_total", probe="deep0") == 0
