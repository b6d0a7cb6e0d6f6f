"""Scale on one core: N held echo sessions in one probed process, a bare client as the floor.

    python -m tests.perf.scale --sizes 1000,10000 --phase 20 \\
        --json tests/perf/results-scale.json --markdown tests/perf/results-scale-table.md

This machine has two cores, so the three parties take turns instead of fighting over them: for
each size the echo server (tests/perf/fast_echo.py, several processes on one port) runs
throughout; first the bare client (tests/perf/bare_client.py) holds N sessions alone, then
probed holds N echo probes alone, both at one message a second per session. Each reports RTT
p50/p99 (raw measurements, tainted included), event-loop lag p99 (oversleep of a 20 ms timer),
its own CPU and the server's while it measured, RSS per session, and the time from start to every
session up. `--profile DIR` records probed's measuring phase with py-spy (collapsed stacks).
`--quick` runs 20 sessions for a couple of seconds: it checks the harness, not the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from probed import gcpolicy, logs
from probed.config import load_config
from probed.daemon import Daemon
from tests.perf.bench import LagSampler, pct, probes_yaml, raw_rtts, rss_kb, tainted_total

ROOT = Path(__file__).parent.parent.parent


def raise_fd_limit() -> int:
    """Every session is a descriptor; children (bare client, server) inherit the limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of processes (from /proc), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks


async def start_server(procs: int) -> tuple[asyncio.subprocess.Process, str, list[int]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.perf.fast_echo", "--procs", str(procs),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode().split()
    return proc, line[2], [int(p) for p in line[4].split(",")]


async def bare_phase(url: str, count: int, warmup: float, seconds: float, server: list[int]
                     ) -> dict[str, Any]:  # fmt: skip
    bare = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.perf.bare_client", url, str(count), str(warmup), str(seconds),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.sleep(warmup)
    server_before = cpu_seconds(server)
    out, _ = await bare.communicate()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    if result["sessions_up"] < count:
        raise RuntimeError(f"bare client: {result['sessions_up']} of {count} sessions up")
    # The bare client's measuring window ends just before it prints.
    result["server_cpu_fraction"] = (cpu_seconds(server) - server_before) / seconds
    return result


async def start_profiler(seconds: float, out: Path) -> asyncio.subprocess.Process:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(os.getpid()), "--duration", str(int(seconds)),
        "--rate", "200", "--format", "raw", "--nonblocking", "--output", str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


class GcPauses:
    """Collector passes while measuring, timed through gc.callbacks: how much of the loop's lag
    is the collector's (py-spy charges a pass to whatever allocation triggered it)."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self.by_generation_ms = [0.0, 0.0, 0.0]
        self._started = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter_ns()
        else:
            pause = (time.perf_counter_ns() - self._started) / 1e6
            self.pauses_ms.append(pause)
            self.by_generation_ms[info["generation"]] += pause

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self)


async def profile(seconds: float, out: Path) -> None:
    await (await start_profiler(seconds, out)).wait()


async def stop_profiler(proc: asyncio.subprocess.Process) -> None:
    """py-spy writes what it has recorded when interrupted."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
    await proc.wait()


async def probed_phase(  # noqa: PLR0917  # the same figures as the bare phase, plus a profile
    url: str, count: int, warmup: float, seconds: float, server: list[int], profile_to: Path | None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probed.yaml"
        path.write_text(probes_yaml(url, count))
        gc.collect()
        rss_before = rss_kb()
        started = time.perf_counter()
        config = load_config(path)
        config_s = time.perf_counter() - started
        daemon = Daemon(config, config_path=path, listen="127.0.0.1:0")
        # The start (to all up, or the minute it is given) is profiled apart from the steady state.
        start_profile = (
            None
            if profile_to is None
            else await start_profiler(60 + warmup, profile_to / f"probed-start-{count}.txt")
        )
        run = asyncio.create_task(daemon.run(handle_signals=False))
        lag = LagSampler()
        lag_task = asyncio.create_task(lag.run())
        running_from = time.perf_counter()
        all_up_s: float | None = None
        # Polled: "all N sessions up" is no single event. Not all up in a minute: measured anyway.
        while time.perf_counter() - running_from < 60 + warmup:
            if sum(p.status.up for p in daemon.exposition.probes()) >= count:
                all_up_s = time.perf_counter() - running_from
                break
            await asyncio.sleep(0.1)
        if start_profile is not None:
            await stop_profiler(start_profile)
        # Measured in steady state: after the GC policy's settling (the young generations are
        # collected every second until then, with automatic collection off). Not in quick mode.
        settled = 3.0 + gcpolicy.SETTLING_S + 1.0 if seconds >= 10 else 0.0
        await asyncio.sleep(max(0.0, warmup, settled) - (time.perf_counter() - running_from))
        rss_per_session = (rss_kb() - rss_before) / count
        before = tainted_total(daemon)
        for p in daemon.exposition.probes():
            p.status.recent.clear()
        lag.lags_ms.clear()
        cpu_before, server_before = time.process_time(), cpu_seconds(server)
        gc_before = gc.get_stats()[2]["collections"]
        with GcPauses() as gc_pauses:
            if profile_to is not None:
                await profile(seconds, profile_to / f"probed-{count}.txt")
            else:
                await asyncio.sleep(seconds)
        cpu_s, server_s = time.process_time() - cpu_before, cpu_seconds(server) - server_before
        full_gcs = gc.get_stats()[2]["collections"] - gc_before
        rtts = raw_rtts(daemon)
        tainted = tainted_total(daemon) - before
        up = sum(p.status.up for p in daemon.exposition.probes())
        daemon.stop()
        await run
        lag_task.cancel()
    return {
        "samples": len(rtts),
        "rtt_p50_ms": pct(rtts, 0.5),
        "rtt_p99_ms": pct(rtts, 0.99),
        "loop_lag_p99_ms": pct(lag.lags_ms, 0.99),
        "tainted_fraction": tainted / len(rtts) if rtts else 0.0,
        "rss_per_session_kb": rss_per_session,
        "config_load_s": round(config_s, 2),
        "all_up_s": None if all_up_s is None else round(all_up_s, 2),
        "sessions_up_at_end": up,
        "cpu_fraction": cpu_s / seconds,
        "server_cpu_fraction": server_s / seconds,
        "full_gc_passes_measuring": full_gcs,
        "gc_passes_measuring": len(gc_pauses.pauses_ms),
        "gc_pause_ms_measuring": round(sum(gc_pauses.pauses_ms), 1),
        "gc_longest_pause_ms": round(max(gc_pauses.pauses_ms, default=0.0), 1),
        "gc_pause_ms_by_generation": [round(ms, 1) for ms in gc_pauses.by_generation_ms],
    }


async def bench_size(
    count: int, seconds: float, server_procs: int, profile_to: Path | None
) -> dict[str, Any]:
    server, url, pids = await start_server(server_procs)
    warmup = 3.0 + count / 1000 if seconds >= 10 else 3.0
    try:
        bare = await bare_phase(url, count, warmup, seconds, pids)
        probed = await probed_phase(url, count, warmup, seconds, pids, profile_to)
    finally:
        server.terminate()
        await server.wait()
    return {
        "sessions": count,
        "phase_seconds": seconds,
        "server_processes": server_procs,
        # The machine is shared: its load says how much of a figure is the neighbours'.
        "load_average_at_end": list(os.getloadavg()),
        "probed": probed,
        "bare": bare,
    }


def markdown(results: list[dict[str, Any]]) -> str:
    def row(label: str, fn: Any) -> str:
        return f"| {label} | " + " | ".join(fn(r["probed"], r["bare"]) for r in results) + " |"

    rows = [
        "| sessions (one probe each), probed / bare | "
        + " | ".join(f"{r['sessions']:,}" for r in results)
        + " |",
        "|---|" + "---|" * len(results),
        row("RTT p50 (ms)", lambda p, b: f"{p['rtt_p50_ms']:.2f} / {b['rtt_p50_ms']:.2f}"),
        row(
            "RTT p99 (ms), ratio",
            lambda p, b: (
                f"{p['rtt_p99_ms']:.2f} / {b['rtt_p99_ms']:.2f} "
                f"({p['rtt_p99_ms'] / b['rtt_p99_ms']:.2f}x)"
            ),
        ),
        row(
            "loop lag p99 (ms)",
            lambda p, b: f"{p['loop_lag_p99_ms']:.1f} / {b['loop_lag_p99_ms']:.1f}",
        ),
        row(
            "RSS per session (KB)",
            lambda p, b: f"{p['rss_per_session_kb']:.0f} / {b['rss_per_session_kb']:.0f}",
        ),
        row(
            "start to all up (s)",
            lambda p, b: (
                (f"{p['all_up_s']:.1f}" if p["all_up_s"] is not None else "not all up")
                + f" / {b['all_up_s']:.1f}"
            ),
        ),
        row("sessions up at the end (probed)", lambda p, b: f"{p['sessions_up_at_end']:,}"),
        row(
            "CPU of one core: client / echo server",
            lambda p, b: (
                f"{100 * p['cpu_fraction']:.0f}% / {100 * b['cpu_fraction']:.0f}%; "
                f"{100 * p['server_cpu_fraction']:.0f}% / {100 * b['server_cpu_fraction']:.0f}%"
            ),
        ),
        row("measurements tainted (probed)", lambda p, b: f"{100 * p['tainted_fraction']:.2f}%"),
        row(
            "GC while measuring (probed): passes, ms in all, longest ms",
            lambda p, b: (
                f"{p.get('gc_passes_measuring', 0)}, {p.get('gc_pause_ms_measuring', 0.0):.0f}, "
                f"{p.get('gc_longest_pause_ms', 0.0):.0f}"
            ),
        ),
        row("config load (probed, s)", lambda p, b: f"{p['config_load_s']:.2f}"),
    ]
    loads = ", ".join(
        f"{r['sessions']:,}: " + "/".join(f"{x:.1f}" for x in r["load_average_at_end"])
        for r in results
    )
    return "\n".join(rows) + f"\n\nLoad average (1/5/15 min) at the end of each size: {loads}\n"


async def main(sizes: list[int], seconds: float, server_procs: int, profile_to: Path | None
               ) -> list[dict[str, Any]]:  # fmt: skip
    logs.configure("error", json=True)
    results = []
    for count in sizes:
        result = await bench_size(count, seconds, server_procs, profile_to)
        print(json.dumps(result), file=sys.stderr, flush=True)
        results.append(result)
    return results


def cli(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--phase", type=float, default=20.0, help="seconds measured per phase")
    parser.add_argument("--server-procs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="20 sessions, 2 s phases")
    parser.add_argument("--profile", type=Path, help="py-spy probed's phase into this directory")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    sizes = [20] if args.quick else [int(s) for s in args.sizes.split(",")]
    seconds = 2.0 if args.quick else args.phase
    limit = raise_fd_limit()
    if max(sizes) + 100 > limit:
        parser.error(f"RLIMIT_NOFILE is {limit}: too few descriptors for {max(sizes)} sessions")
    import uvloop

    results = uvloop.run(main(sizes, seconds, args.server_procs, args.profile))
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
