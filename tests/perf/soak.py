"""Soak under hostility: 100 probes, churn, faults on a schedule; resources must stay flat.

80 probes churn against the echo target (a new session every 2 s), which also closes every
session with 1011 every 5 s; 10 probes face a ping flood that never reads; 10 get replies nested
200,000 deep. The daemon runs here on uvloop, as in production; the far ends run in a process of
their own (tests/perf/soak_servers.py), so RSS, tasks and descriptors sampled here are the
daemon's. Prints a table, and writes the rows as JSON for tests/perf/test_soak_hostile.py.

    python -m tests.perf.soak --minutes 30 --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import uvloop

from probed import logs
from probed.config import parse_config
from probed.daemon import Daemon
from tests.test_hostile_peers import rss_bytes


@dataclass(frozen=True)
class Row:
    t_s: float
    rss_mib: float
    tasks: int
    fds: int
    churn_replies: float
    floods: float
    restarts: float


def entries(prefix: str, url: str, count: int, extra: str = "") -> str:
    return "".join(
        f"  - {{name: {prefix}{i}, kind: echo, url: '{url}', interval: 200ms, timeout: 1s,"
        f" connection: {{reconnect: {{initial: 500ms, max: 2s}}{extra}}}}}\n"
        for i in range(count)
    )


def count(daemon: Daemon, family: str, **labels: str) -> float:
    """Sum of a family's samples with these labels, straight from the exposition collector."""
    return sum(
        float(sample.value)
        for metric in daemon.exposition.collect()
        for sample in metric.samples
        if sample.name == family and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def soak(urls: dict[str, str], minutes: float, sample_every: float) -> list[Row]:
    text = (
        "global: {log_level: info}\nprobes:\n"
        + entries("churn", urls["echo"], 80, ", churn: 2s")
        + entries("flood", urls["flood"], 10)
        + entries("deep", urls["deep"], 10)
    )
    daemon = Daemon(parse_config(text, source="<soak>"), listen="127.0.0.1:0")
    task = asyncio.create_task(daemon.run(handle_signals=False))
    await daemon.ready.wait()
    rows: list[Row] = []
    started = time.monotonic()
    next_fault, next_sample = started + 5, started + 10
    async with aiohttp.ClientSession() as http:
        while time.monotonic() - started < minutes * 60:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if now >= next_fault:
                fault = {"close": 1011, "reason": "soak fault"}
                async with http.post(urls["echo_control"], json=fault) as resp:
                    resp.raise_for_status()
                next_fault = now + 5
            if now >= next_sample:
                rows.append(
                    Row(
                        round(now - started, 1),
                        round(rss_bytes() / 2**20, 1),
                        len(asyncio.all_tasks()),
                        len(os.listdir("/proc/self/fd")),
                        count(daemon, "probe_messages_received_total"),
                        count(daemon, "probe_disconnects_total", reason="flood"),
                        count(daemon, "probed_probe_restarts_total"),
                    )
                )
                print_row(rows[-1])
                next_sample = now + sample_every
    daemon.stop()
    await task
    return rows


def print_row(r: Row) -> None:
    print(
        f"| {r.t_s:7.0f} | {r.rss_mib:7.1f} | {r.tasks:5d} | {r.fds:3d} | {r.churn_replies:9.0f}"
        f" | {r.floods:6.0f} | {r.restarts:3.0f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample-every", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    every = args.sample_every or max(5.0, args.minutes * 60 / 30)
    # Production's info level, into nothing.
    logs.configure("info", json=True, stream=open(os.devnull, "w"))  # noqa: SIM115
    print("| t (s) | RSS MiB | tasks | fds | replies | floods | restarts |")
    print("|---|---|---|---|---|---|---|")
    servers = subprocess.Popen(
        [sys.executable, "-m", "tests.perf.soak_servers"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert servers.stdout is not None
        urls = json.loads(servers.stdout.readline())
        rows = uvloop.run(soak(urls, args.minutes, every))
    finally:
        servers.kill()
        servers.wait()
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")


if __name__ == "__main__":
    main()
