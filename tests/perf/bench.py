"""Benchmark: N echo probes against an echo server in another process, a bare client as the floor.

    python -m tests.perf.bench --sizes 10,100,1000 --phase 30 --json tests/perf/results.json

For each size it reports, in one run: probe RTT p50/p99 (raw measurements, tainted included) with
and without a scrape every 5 s, the bare client's RTT beside it, event-loop lag p99, the CPU of
one /metrics render, how long an unchanged reload blocks the loop (and how much of it is parsing),
RSS per session for probed and for the bare client, and the fraction of measurements tainted.
`--quick` runs a tiny size for a few seconds: it checks that the harness works, not the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from probed import logs
from probed.config import load_config
from probed.daemon import Daemon
from probed.reload_parse import fingerprints_of, parse_reload
from probed.series import Histogram
from tests.perf.scrape_loop import OPENMETRICS

T = TypeVar("T")
PROTOBUF = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"
)


def rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def probes_yaml(
    url: str, count: int, *, location: str = "bench", extra: tuple[str, ...] = ()
) -> str:
    """`count` echo probes at one message a second; `extra` lines go into each probe."""
    lines = ["global:", f"  labels: {{location: {location}}}", "  log_level: error", "probes:"]
    for i in range(count):
        lines += [
            f"  - name: p{i:05d}",
            "    kind: echo",
            f"    url: {url}",
            "    interval: 1s",
            "    timeout: 5s",
            *extra,
        ]
    return "\n".join(lines) + "\n"


class LagSampler:
    """The harness's own view of loop lag: oversleep of a 20 ms timer, every wake-up kept."""

    def __init__(self) -> None:
        self.lags_ms: list[float] = []

    async def run(self) -> None:
        while True:
            start = time.perf_counter_ns()
            await asyncio.sleep(0.02)
            self.lags_ms.append(max(0.0, (time.perf_counter_ns() - start) / 1e6 - 20))


RELOADS = 5


async def longest_stall_ms(during: Awaitable[T]) -> tuple[T, float]:
    """Await `during` while a 1 ms ticker watches the loop: the longest it was held (ms)."""
    longest = 0.0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal longest
        last = time.perf_counter_ns()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter_ns()
            longest = max(longest, (now - last) / 1e6 - 1.0)
            last = now

    watcher = asyncio.create_task(watch())
    try:
        return await during, longest
    finally:
        done.set()
        await watcher


def render_cpu_ms(daemon: Daemon, accept: str) -> tuple[float, int]:
    """CPU of one /metrics render as the handler does it, and the body size."""
    start = time.thread_time_ns()
    body = daemon.exposition.render(accept)[0]
    return (time.thread_time_ns() - start) / 1e6, len(body)


async def start_echo() -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "probed", "target", "echo", "--port", "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode()
    url = line.split(" on ")[1].split()[0]
    return proc, url


async def start_scraper(url: str, every: float) -> asyncio.subprocess.Process:
    """A scraper in its own process, idle until told "go" (tests/perf/scrape_loop.py)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.perf.scrape_loop", url, str(every),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return proc


def tainted_total(daemon: Daemon) -> float:
    return sum(p.tainted_total.value for p in daemon.exposition.probes())


def raw_rtts(daemon: Daemon) -> list[float]:
    return [s * 1e3 for p in daemon.exposition.probes() for s in p.status.recent]


def native_buckets_mean(daemon: Daemon) -> float:
    counts = [
        len(child.native)
        for p in daemon.exposition.probes()
        for f in p.registry.families
        if isinstance(f, Histogram)
        for _, child in f.children()
        if child.native is not None
    ]
    return statistics.fmean(counts) if counts else 0.0


def clear_rtts(daemon: Daemon) -> None:
    for p in daemon.exposition.probes():
        p.status.recent.clear()


async def phase(daemon: Daemon, seconds: float, lag: LagSampler) -> dict[str, float]:
    clear_rtts(daemon)
    lag.lags_ms.clear()
    tainted_before = tainted_total(daemon)
    await asyncio.sleep(seconds)
    rtts = raw_rtts(daemon)
    tainted = tainted_total(daemon) - tainted_before
    return {
        "samples": len(rtts),
        "rtt_p50_ms": pct(rtts, 0.5),
        "rtt_p99_ms": pct(rtts, 0.99),
        "loop_lag_p99_ms": pct(lag.lags_ms, 0.99),
        "tainted_fraction": tainted / len(rtts) if rtts else 0.0,
    }


def gc_pause_recorder() -> list[tuple[int, int, float]]:
    """(when, generation, ms) of the collector's pauses: they stop the loop like a blocking call."""
    pauses: list[tuple[int, int, float]] = []
    started = [0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter_ns()
        else:
            now = time.perf_counter_ns()
            pauses.append((now, info["generation"], (now - started[0]) / 1e6))

    gc.callbacks.append(callback)
    return pauses


async def bench_size(count: int, seconds: float) -> dict[str, Any]:
    gc_pauses = gc_pause_recorder()
    echo, url = await start_echo()
    warmup = (3.0 if seconds >= 10 else 1.0) + count / 500
    bare = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.perf.bare_client", url, str(count), str(warmup),
        str(2 * seconds),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probed.yaml"
        path.write_text(probes_yaml(url, count))
        rss_before = rss_kb()
        daemon = Daemon(load_config(path), config_path=path, listen="127.0.0.1:0")
        run = asyncio.create_task(daemon.run(handle_signals=False))
        lag = LagSampler()
        lag_task = asyncio.create_task(lag.run())
        started = time.perf_counter()
        # Polled: "all N sessions up" is no single event.
        while sum(p.status.up for p in daemon.exposition.probes()) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        all_up_s = time.perf_counter() - started
        assert daemon.bound is not None
        # Started during the warm-up: starting a process forks this one (see scrape_loop).
        scrapes = await start_scraper(
            f"http://{daemon.bound[0]}:{daemon.bound[1]}/metrics", 5.0 if seconds >= 10 else 1.0
        )
        await asyncio.sleep(max(0.0, warmup - all_up_s))
        rss_per_session = (rss_kb() - rss_before) / count
        measuring_from = time.perf_counter_ns()
        quiet = await phase(daemon, seconds, lag)
        assert scrapes.stdin is not None
        scrapes.stdin.write(b"go\n")
        scraped = await phase(daemon, seconds, lag)
        scrapes.stdin.write(b"stop\n")
        walls: list[float] = json.loads((await scrapes.communicate())[0])
        measuring_to = time.perf_counter_ns()
        # What a scrape costs in steady state: the previous scrape was a second ago.
        cpu: dict[str, float] = {}
        sizes: dict[str, int] = {}
        for fmt, accept in (("text", "text/plain"), ("openmetrics", OPENMETRICS),
                            ("protobuf", PROTOBUF)):  # fmt: skip
            cpu[f"{fmt}_first"], _ = render_cpu_ms(daemon, accept)
            await asyncio.sleep(1.0)
            cpu[fmt], sizes[fmt] = render_cpu_ms(daemon, accept)
        native_buckets = native_buckets_mean(daemon)
        # The reload starts a second after the last render, as it would in production: a stall
        # of the loop just before it (a render, or parsing on the loop as below) leaves a backlog
        # of replies that the reload's own stall figure would otherwise include.
        # Five reloads a second apart: one figure from a shared machine is mostly its neighbours.
        stalls: list[float] = []
        reloads: list[float] = []
        for _ in range(RELOADS):
            await asyncio.sleep(1.0)
            start = time.perf_counter_ns()
            (ok, message), stall_ms = await longest_stall_ms(daemon.reload())
            reloads.append((time.perf_counter_ns() - start) / 1e6)
            stalls.append(stall_ms)
            assert ok and "kept: " + str(count) in message, message
        # What the reload's child process does (here on the loop, after the reloads).
        start = time.perf_counter_ns()
        load_config(path)
        parse_ms = (time.perf_counter_ns() - start) / 1e6
        # What stays on the loop once the child has parsed: keeping the probes it found unchanged.
        parsed, _prints = await parse_reload(path, fingerprints_of(daemon.config))
        start = time.perf_counter_ns()
        kept = daemon._apply(parsed)
        apply_ms = (time.perf_counter_ns() - start) / 1e6
        assert len(kept["kept"]) == count, kept
        daemon.stop()
        await run
        lag_task.cancel()
    out, _ = await bare.communicate()
    echo.terminate()
    await echo.wait()
    return {
        "probes": count,
        # The machine is shared: its load says how much of a figure is the neighbours'.
        "load_average_1m_at_end": os.getloadavg()[0],
        "phase_seconds": seconds,
        "all_sessions_up_s": round(all_up_s, 2),
        "no_scrape": quiet,
        "scrape_every_5s": scraped,
        "scrape_wall_ms": walls,
        "scrape_cpu_ms": cpu,
        "exposition_bytes": sizes,
        # How spread the latencies are: the protobuf render's cost grows with native buckets.
        "native_buckets_mean": native_buckets,
        # The whole reload (parsing runs in a child process) and the longest the loop was held.
        "reload_unchanged_ms": statistics.median(reloads),
        "reload_longest_loop_stall_ms": max(stalls),
        "reload_loop_stall_median_ms": statistics.median(stalls),
        "reload_parse_ms": parse_ms,
        "reload_apply_ms": apply_ms,
        # While measuring (both phases): full collections and the longest pauses.
        "gc_full_collections_measuring": [
            round(ms, 1)
            for at, gen, ms in gc_pauses
            if gen == 2 and measuring_from <= at <= measuring_to
        ],
        "gc_longest_pauses_measuring_ms": sorted(
            round(ms, 1) for at, _gen, ms in gc_pauses if measuring_from <= at <= measuring_to
        )[-5:],
        "rss_per_session_kb": rss_per_session,
        "bare": json.loads(out.decode().strip().splitlines()[-1]),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    def row(label: str, fn: Any) -> str:
        return f"| {label} | " + " | ".join(fn(r) for r in results) + " |"

    head = "| probes | " + " | ".join(f"{r['probes']:,}" for r in results) + " |"
    rows = [
        head,
        "|---|" + "---|" * len(results),
        row(
            "RTT p50 probed / bare (ms)",
            lambda r: f"{r['no_scrape']['rtt_p50_ms']:.2f} / {r['bare']['rtt_p50_ms']:.2f}",
        ),
        row(
            "RTT p99 probed / bare (ms)",
            lambda r: f"{r['no_scrape']['rtt_p99_ms']:.2f} / {r['bare']['rtt_p99_ms']:.2f}",
        ),
        row(
            "RTT p99 scraped every 5 s (ms, ratio)",
            lambda r: (
                f"{r['scrape_every_5s']['rtt_p99_ms']:.2f} "
                f"({r['scrape_every_5s']['rtt_p99_ms'] / r['no_scrape']['rtt_p99_ms']:.2f}x)"
            ),
        ),
        row(
            "loop lag p99, quiet / scraped (ms)",
            lambda r: (
                f"{r['no_scrape']['loop_lag_p99_ms']:.1f} / "
                f"{r['scrape_every_5s']['loop_lag_p99_ms']:.1f}"
            ),
        ),
        row(
            "scrape CPU text / OpenMetrics / protobuf (ms)",
            lambda r: " / ".join(
                f"{r['scrape_cpu_ms'][k]:.1f}" for k in ("text", "openmetrics", "protobuf")
            ),
        ),
        row(
            "scrape wall via curl, median (ms)",
            lambda r: (
                f"{statistics.median(r['scrape_wall_ms']):.1f}" if r["scrape_wall_ms"] else "-"
            ),
        ),
        row(
            "unchanged reload x5: loop stall median, max / whole / parsing (child) / _apply (ms)",
            lambda r: (
                f"{r['reload_loop_stall_median_ms']:.1f}, {r['reload_longest_loop_stall_ms']:.1f}"
                f" / {r['reload_unchanged_ms']:.1f} / "
                f"{r['reload_parse_ms']:.1f} / {r['reload_apply_ms']:.2f}"
            ),
        ),
        row(
            "RSS per session probed / bare (KB)",
            lambda r: f"{r['rss_per_session_kb']:.0f} / {r['bare']['rss_per_session_kb']:.0f}",
        ),
        row(
            "measurements tainted, quiet / scraped",
            lambda r: (
                f"{100 * r['no_scrape']['tainted_fraction']:.2f}% / "
                f"{100 * r['scrape_every_5s']['tainted_fraction']:.2f}%"
            ),
        ),
        row("all sessions up (s)", lambda r: f"{r['all_sessions_up_s']:.1f}"),
        row(
            "full GC passes while measuring (ms each)",
            lambda r: ", ".join(f"{ms:.0f}" for ms in r["gc_full_collections_measuring"]) or "none",
        ),
        row(
            "machine load average (1 min) at the end",
            lambda r: f"{r['load_average_1m_at_end']:.1f}",
        ),
    ]
    return "\n".join(rows) + "\n"


async def main(sizes: list[int], seconds: float) -> list[dict[str, Any]]:
    logs.configure("error", json=True)
    results = []
    for count in sizes:
        result = await bench_size(count, seconds)
        print(json.dumps(result), file=sys.stderr, flush=True)
        results.append(result)
    return results


def cli(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--phase", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--quick", action="store_true", help="3 probes, 2 s phases")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    sizes = [3] if args.quick else [int(s) for s in args.sizes.split(",")]
    seconds = 1.5 if args.quick else args.phase
    import uvloop

    results = uvloop.run(main(sizes, seconds))
    table = markdown(results)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"python": sys.version, "cpus": os.cpu_count(),
                                         "results": results}, indent=1) + "\n")  # fmt: skip
    if args.markdown:
        args.markdown.write_text(table)
    return results


if __name__ == "__main__":
    cli()
