"""CPU of one /metrics render for N probes' families, without sessions: the exposition alone.

    python -m tests.perf.render_cost --probes 1000
    python -m tests.perf.render_cost --probes 1000 --interval 1 --profile /tmp/render.prof

The state is the daemon's after it has run a while: each probe's round trips have spread over
`--history` seconds of one message a second (log-normal, median 1.5 ms: about 100 native buckets
per histogram, as the 1,000-probe benchmark shows), and between two renders every probe sends and
times `--interval` x `--rate` messages (a scrape every 5 s at 1 message/s: five observations per
histogram, so every probe's latency histogram and message counters changed, and a few of its
native buckets). Each render then re-renders what changed and reuses the rest, as in the daemon.
`--interval 1` is what the benchmark's in-daemon figure measures (two renders a second apart).

`--daemon` measures the same inside a running daemon: N echo probes against an echo server in
another process, their round-trip histograms given a history drawn from the round trips the
daemon measures, then renders
`--interval` seconds apart while the probes run (a larger heap, the loop's own work between).
No measurement is withheld for loop lag there, so every probe's histogram moves between renders
as on a quiet machine, however busy this one is. `--profile` works there too (every render but
the first).

    python -m tests.perf.render_cost --daemon --interval 5 --formats protobuf --profile /tmp/d.prof
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from probed.exposition import Format
from probed.metrics import DaemonMetrics, Exposition, ProbeMetrics
from probed.probes.messages import MessageMetrics
from probed.series import Histogram


def rtt_ns(rng: random.Random) -> int:
    # Loopback round trips on a busy 2-core machine: around 1.5 ms, a long tail to tens of ms.
    return int(rng.lognormvariate(0.0, 0.7) * 1.5e6)


def exchange(m: MessageMetrics, probe: ProbeMetrics, rng: random.Random) -> None:
    """One message sent and its reply timed, as the echo probe records them."""
    m.sent()
    m._received.inc()
    m.latency.observe(0, rtt_ns(rng))
    probe.set_success(True)


Probes = list[tuple[ProbeMetrics, MessageMetrics]]


def build(count: int, history: int, seed: int) -> tuple[Exposition, Probes]:
    rng = random.Random(seed)
    exposition = Exposition(DaemonMetrics())
    exposition.labels = {"location": "bench"}
    probes = []
    for i in range(count):
        probe = ProbeMetrics(
            f"p{i:05d}", kind="echo", target="ws://127.0.0.1:1/", slo_thresholds=(0.05,)
        )
        m = MessageMetrics(probe, probe.latency("probe_message_rtt_seconds", "RTT"))
        probe.session().connected_ok(
            phases={"dns": 0.001, "tcp": 0.001, "upgrade": 0.001, "setup": 0.0},
            total=0.003, reconnect=None, cert_expiry=None,
        )  # fmt: skip
        for _ in range(history):
            exchange(m, probe, rng)
        probe.status.recent.clear()
        exposition.add(probe)
        probes.append((probe, m))
    return exposition, probes


def native_buckets_mean(exposition: Exposition) -> float:
    counts = [
        len(child.native)
        for p in exposition.probes()
        for f in p.registry.families
        if isinstance(f, Histogram)
        for _, child in f.children()
        if child.native is not None
    ]
    return statistics.fmean(counts) if counts else 0.0


def render(exposition: Exposition, fmt: Format) -> tuple[int, float]:
    """One render as the daemon slices it, then joined as `render_format` does: its size, and
    the CPU of the longest step between two pauses (the daemon writes the parts in pieces, so
    the join is not a step). CPU, not wall time: on a shared machine the wall time of a step is
    mostly the neighbours'."""
    steps = exposition._render(fmt)
    longest, last = 0, time.thread_time_ns()
    for _ in steps:
        now = time.thread_time_ns()
        longest, last = max(longest, now - last), now
    longest = max(longest, time.thread_time_ns() - last)
    return len(b"".join(steps.result)), longest / 1e6


def main(
    count: int,
    renders: int,
    *,
    interval: float,
    rate: float,
    history: int,
    profile: Path | None,
    formats: list[Format],
) -> None:
    exposition, probes = build(count, history, seed=1)
    rng = random.Random(2)
    per_render = max(1, round(interval * rate))
    print(
        f"{count} probes, {native_buckets_mean(exposition):.0f} native buckets per histogram,"
        f" {per_render} message(s) per probe between renders"
    )
    profiler = cProfile.Profile() if profile else None
    for fmt in formats:
        cpu, slices, size = [], [], 0
        for n in range(renders + 2):
            for probe, m in probes:
                for _ in range(per_render):
                    exchange(m, probe, rng)
                probe.status.recent.clear()
            measured = n >= 2
            start = time.thread_time_ns()
            if measured and profiler is not None:
                profiler.enable()
            size, longest = render(exposition, fmt)
            if measured and profiler is not None:
                profiler.disable()
            cpu.append((time.thread_time_ns() - start) / 1e6)
            slices.append(longest)
        steady = cpu[2:]  # the first renders fill the caches
        print(
            f"{fmt.name:12} median {statistics.median(steady):.1f} ms CPU,"
            f" max {max(steady):.1f} ms, {size / 1e6:.1f} MB;"
            f" longest step {max(slices[2:]):.2f} ms CPU"
        )
    if profiler is not None and profile is not None:
        profiler.dump_stats(profile)


ACCEPT = {
    Format.TEXT: "text/plain",
    Format.OPENMETRICS: "application/openmetrics-text; version=1.0.0",
    Format.PROTOBUF: "application/vnd.google.protobuf;"
    "proto=io.prometheus.client.MetricFamily;encoding=delimited",
}


async def in_daemon(
    count: int,
    renders: int,
    *,
    interval: float,
    history: int,
    formats: list[Format],
    profile: Path | None = None,
) -> None:
    # Imported here: the exposition-only mode needs no daemon.
    from probed import logs
    from probed.config import load_config
    from probed.daemon import Daemon
    from tests.perf.bench import gc_pause_recorder, probes_yaml, render_cpu_ms, start_echo

    logs.configure("error", json=True)
    echo, url = await start_echo()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "probed.yaml"
            # Nothing withheld for loop lag: on a busy machine most measurements would be, and
            # fewer histograms would move between renders than on a quiet one.
            config = probes_yaml(url, count).replace(
                "global:\n", "global:\n  loop_lag_threshold: 1s\n"
            )
            path.write_text(config)
            daemon = Daemon(load_config(path), config_path=path, listen="127.0.0.1:0")
            run = asyncio.create_task(daemon.run(handle_signals=False))
            # Polled: "all N sessions up" is no single event.
            while sum(p.status.up for p in daemon.exposition.probes()) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            # The history is drawn from the round trips this daemon measures on this machine
            # (10 s of them, every probe's pooled), so that new observations mostly land in
            # buckets the history filled, as in a daemon that has run for hours.
            for probe in daemon.exposition.probes():
                probe.status.recent.clear()
            await asyncio.sleep(10.0)
            pool = [s for probe in daemon.exposition.probes() for s in probe.status.recent]
            rng = random.Random(1)
            for probe in daemon.exposition.probes():
                for family in probe.registry.families:
                    if family.name == "probe_message_rtt_seconds":
                        assert isinstance(family, Histogram)
                        for _ in range(history):
                            family.observe(rng.choice(pool) if pool else rtt_ns(rng) / 1e9)
            await asyncio.sleep(3.0)
            # As in the benchmark, whose renders come after a minute of running: the collector
            # is back on (it is off while the fleet settles), with the daemon's steady thresholds,
            # so a render pays for the collections its allocations trigger.
            while not gc.isenabled():  # noqa: ASYNC110
                await asyncio.sleep(0.5)
            print(
                f"in the daemon: {count} probes, {native_buckets_mean(daemon.exposition):.0f}"
                f" native buckets per histogram, renders {interval:g} s apart,"
                f" load average {os.getloadavg()[0]:.1f}, collector thresholds {gc.get_threshold()}"
            )
            rtts = [
                child
                for probe in daemon.exposition.probes()
                for family in probe.registry.families
                if family.name == "probe_message_rtt_seconds" and isinstance(family, Histogram)
                for _, child in family.children()
            ]
            profiler = cProfile.Profile() if profile else None
            pauses = gc_pause_recorder()
            for fmt in formats:
                cpu: list[float] = []
                collecting: list[float] = []
                moved: list[int] = []
                size = 0
                for _ in range(renders + 1):
                    before = [h.count for h in rtts]
                    await asyncio.sleep(interval)
                    # Measurements taken while the loop lagged are withheld: not every probe's
                    # histogram moves each second on a busy machine.
                    moved.append(sum(h.count != n for h, n in zip(rtts, before, strict=True)))
                    if profiler is not None and cpu:
                        profiler.enable()
                    seen = len(pauses)
                    ms, size = render_cpu_ms(daemon, ACCEPT[fmt])
                    if profiler is not None:
                        profiler.disable()
                    cpu.append(ms)
                    collecting.append(sum(p[2] for p in pauses[seen:]))
                steady = cpu[1:]  # the first render lays the exposition out
                print(
                    f"{fmt.name:12} median {statistics.median(steady):.1f} ms CPU,"
                    f" max {max(steady):.1f} ms, {size / 1e6:.1f} MB,"
                    f" histograms moved between renders: {statistics.median(moved[1:]):.0f}"
                )
                # The benchmark's figure is the second render of a format (`render_cpu_ms` a
                # second after the one that laid it out): shown apart, with the collector's
                # passes that fell inside each render (wall ms, part of the CPU figures).
                print(
                    f"{'':12} layout {cpu[0]:.0f} ms, second render {cpu[1]:.1f} ms;"
                    f" each: {' '.join(f'{c:.1f}' for c in steady)};"
                    f" in collections: {' '.join(f'{c:.1f}' for c in collecting[1:])}"
                )
            if profiler is not None and profile is not None:
                profiler.dump_stats(profile)
            daemon.stop()
            await run
    finally:
        echo.terminate()
        await echo.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--renders", type=int, default=5)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between scrapes")
    parser.add_argument("--rate", type=float, default=1.0, help="messages per second per probe")
    parser.add_argument(
        "--history", type=int, default=600, help="messages each probe timed before measuring"
    )
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the renders here")
    parser.add_argument(
        "--formats", default="text,openmetrics,protobuf", help="which formats to render"
    )
    parser.add_argument("--daemon", action="store_true", help="measure in a running daemon")
    args = parser.parse_args()
    formats = [Format[f.strip().upper()] for f in args.formats.split(",")]
    if args.daemon:
        import uvloop

        uvloop.run(
            in_daemon(
                args.probes,
                args.renders,
                interval=args.interval,
                history=args.history,
                formats=formats,
                profile=args.profile,
            )
        )
        raise SystemExit(0)
    main(
        args.probes,
        args.renders,
        interval=args.interval,
        rate=args.rate,
        history=args.history,
        profile=args.profile,
        formats=formats,
    )
