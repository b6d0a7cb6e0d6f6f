"""Measurement error against the wire: what probed reports minus what tcpdump saw on loopback.

    python -m tests.perf.wire --sizes 1,1000,10000 --seconds 20 \
        --json tests/perf/results-wire.json --markdown tests/perf/results-wire-table.md

For each size: an echo server in its own process (as tests/perf/bench.py starts it), tcpdump on
`lo` filtered on its port, probed with N echo probes in this process and the bare uvloop +
websockets client (tests/perf/bare_client.py) with N sessions in another, both against that one
server. The wire round trip of a message is the capture time of the segment that completed the
reply frame minus that of the segment that completed the request frame (kernel software
timestamps, the only kind `lo` has; taken in the sending process's write, nanosecond precision).
Error = reported RTT - wire RTT, per message, for every message both sides saw in the window.

probed's reported RTT is recorded in-process by wrapping, not altering, the calls where the echo
probe measures: `EchoProbe._on_reply` (the reply's text, to find its message on the wire) and
`Latency.observe` (the start and end it records, and whether the lag rule kept or tainted it).
`--quick` runs 2 sessions for 2 s: it checks that every message is paired, not the figures.
Exit status 77 means the capture cannot run here (no tcpdump, or no permission to capture).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probed import logs
from probed.config import load_config
from probed.daemon import Daemon
from probed.metrics import Latency
from probed.probes.echo import EchoProbe
from tests.perf.bench import LagSampler, pct, probes_yaml, start_echo
from tests.perf.wire_parse import OP_TEXT, CaptureStats, messages

SKIP_EXIT = 77
# Enough for the upgrade request and response and a few frames; data segments here are ~150 B.
SNAPLEN = 512
BUFFER_KIB = 256 * 1024
# probed's default echo message, plus the probe's name: ids carry a 3-byte random run prefix,
# which 10,000 probes would sometimes share, so the name makes every message's key unique.
TEMPLATE = '{"type":"ping","id":"{id}","seq":{seq},"sent_at":{send_time},"probe":"{probe}"}'


class CaptureUnavailable(RuntimeError):
    """tcpdump is missing or may not capture here."""


def message_key(text: str | bytes) -> str | None:
    """What names a message on both sides: probe/id for probed's JSON, the text for the bare."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if text.startswith("{"):
        try:
            obj = json.loads(text)
            return f"{obj['probe']}/{obj['id']}"
        except (ValueError, KeyError, TypeError):
            return None
    return text


@dataclass
class Capture:
    """tcpdump writing one port's segments on `lo` to a pcap file."""

    proc: asyncio.subprocess.Process
    path: Path
    stats: dict[str, int] = field(default_factory=dict)

    @classmethod
    async def start(cls, port: int, path: Path) -> Capture:
        if shutil.which("tcpdump") is None:
            raise CaptureUnavailable("tcpdump is not installed (apt-get install tcpdump)")
        # Pure ACKs carry nothing to time and would double the capture: keep segments with data
        # and the SYNs and FINs that delimit each stream.
        data = "(ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) > 0"
        flt = f"tcp port {port} and (tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0 or {data})"
        proc = await asyncio.create_subprocess_exec(
            "tcpdump", "-i", "lo", "-n", "-s", str(SNAPLEN), "-B", str(BUFFER_KIB),
            "-j", "host", "--time-stamp-precision=nano", "-Z", "root", "-w", str(path), flt,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        # tcpdump says "listening on lo" once the socket is open and filtered: packets from then
        # on are captured. Anything else first is why it cannot.
        said = b""
        try:
            async with asyncio.timeout(10):
                while b"listening on" not in said:
                    line = await proc.stderr.readline()
                    if not line:
                        break
                    said += line
        except TimeoutError:
            pass
        if b"listening on" not in said:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            raise CaptureUnavailable(f"tcpdump cannot capture on lo: {said.decode().strip()}")
        return cls(proc, path)

    async def stop(self) -> dict[str, int]:
        """Stop (SIGINT flushes the file) and return tcpdump's own counts, drops included."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.stderr is not None
        rest = (await self.proc.stderr.read()).decode()
        await self.proc.wait()
        for number, what in re.findall(r"(\d+) packets? ([a-z ]+)", rest):
            self.stats[what.strip().replace(" ", "_")] = int(number)
        return self.stats


class Recorder:
    """Every reply probed's echo probes measure: its text, start, end and whether it was kept.

    Wraps the two calls where the probe measures, in this process only; the wrapped calls run
    unchanged and their results are passed through. Rows are parsed after the run, so the
    wrapper adds an append per reply to the loop, nothing more.
    """

    def __init__(self) -> None:
        self.rows: list[tuple[str | bytes, int, int, bool]] = []
        self.active = False
        self._last: tuple[int, int, bool] | None = None
        self._undo: list[Callable[[], None]] = []

    def install(self) -> None:
        observe = Latency.observe
        on_reply = EchoProbe._on_reply
        recorder = self

        def recorded_observe(latency: Latency, start_ns: int, end_ns: int) -> bool:
            kept = observe(latency, start_ns, end_ns)
            recorder._last = (start_ns, end_ns, kept)
            return kept

        def recorded_on_reply(probe: EchoProbe, data: str | bytes, at_ns: int) -> None:
            recorder._last = None
            on_reply(probe, data, at_ns)
            if recorder._last is not None and recorder.active:
                recorder.rows.append((data, *recorder._last))

        setattr(Latency, "observe", recorded_observe)  # noqa: B010 (mypy: method assignment)
        setattr(EchoProbe, "_on_reply", recorded_on_reply)  # noqa: B010
        self._undo = [
            lambda: setattr(Latency, "observe", observe),
            lambda: setattr(EchoProbe, "_on_reply", on_reply),
        ]

    def uninstall(self) -> None:
        for undo in self._undo:
            undo()
        self._undo = []


def schedstat(pid: int) -> tuple[int, int, int]:
    """(ns on a CPU, ns runnable but waiting for one, timeslices) of a process so far; zeros
    once it has gone."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            on_cpu, waiting, slices = f.read().split()
    except OSError:
        return 0, 0, 0
    return int(on_cpu), int(waiting), int(slices)


def sched_delta(
    before: tuple[int, int, int], after: tuple[int, int, int], seconds: float
) -> dict[str, float]:
    """A process's CPU share, and how long it waited for a CPU once runnable: the part of a
    late timestamp that is the machine's, not the process's own work."""
    if not any(after):  # it ended before the window did
        return {"cpu_share": math.nan, "runqueue_wait_share": math.nan,
                "runqueue_wait_per_slice_ms": math.nan}  # fmt: skip
    on_cpu, waiting, slices = (a - b for a, b in zip(after, before, strict=True))
    return {
        "cpu_share": round(on_cpu / 1e9 / seconds, 3),
        "runqueue_wait_share": round(waiting / 1e9 / seconds, 3),
        "runqueue_wait_per_slice_ms": round(waiting / 1e6 / slices, 3) if slices else 0.0,
    }


def cpu_pressure_us() -> int | None:
    """Microseconds so far in which some runnable task waited for a CPU (PSI), if the kernel
    keeps it."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


def raise_nofile(count: int) -> tuple[int, int]:
    """Room for the sessions: the echo server holds both clients' (2N), probed N. Inherited by
    the child processes, so set here before they start."""
    want = 2 * count + 4096
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:  # root may raise the hard limit up to fs.nr_open
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    elif soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@dataclass(frozen=True, slots=True)
class Reported:
    """One round trip as a client reported it: its key, start (CLOCK_MONOTONIC ns), RTT, kept."""

    key: str | None
    start_ns: int
    rtt_ns: int
    kept: bool = True  # the bare client has no taint rule


def wire_times(path: Path, port: int) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """key -> (request, reply) capture times in ns for every message answered on the wire, and
    the capture's counts."""
    stats = CaptureStats()
    requests: dict[tuple[tuple[str, int], str], int] = {}
    times: dict[str, tuple[int, int]] = {}
    # Per client: (stream offset past each reply, its key), in stream order.
    reply_ends: dict[tuple[str, int], list[tuple[int, str]]] = {}
    repeated = 0
    for cm in messages(path, port, stats):
        if cm.message.opcode != OP_TEXT:
            continue
        key = message_key(cm.message.payload)
        if key is None:
            continue
        # Keyed by connection too: a reply pairs with the request on its own connection.
        conn_key = (cm.client, key)
        if cm.from_client:
            if conn_key in requests:
                repeated += 1
            requests[conn_key] = cm.message.ts_ns
        elif conn_key in requests and key not in times:
            times[key] = (requests.pop(conn_key), cm.message.ts_ns)
            reply_ends.setdefault(cm.client, []).append((cm.message.end, key))
    # A reply whose bytes were sent again reached its client no earlier than the last copy:
    # the wait for the retransmission is the kernel's, not the client's, so it counts as wire.
    retransmitted = 0
    for (client, from_client), ranges in stats.retransmits.items():
        ends = reply_ends.get(client, [])
        for low, high, ts_ns in [] if from_client else ranges:
            i = bisect.bisect_right(ends, (low, "\uffff"))
            while i < len(ends) and ends[i][0] <= high:
                key = ends[i][1]
                request_ns, reply_ns = times[key]
                if ts_ns > reply_ns:
                    times[key] = (request_ns, ts_ns)
                    retransmitted += 1
                i += 1
    counts = {
        "records": stats.records,
        "segments": stats.segments,
        "connections": stats.connections,
        "truncated_segments": stats.truncated,
        "duplicate_segments": stats.duplicates,
        "resyncs": stats.resyncs,
        "bad_frames": stats.bad_frames,
        "connections_on_a_reused_port": stats.port_reuses,
        "repeated_request_keys": repeated,
        "replies_retransmitted": retransmitted,
    }
    return times, counts


def realtime_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC now (capture times are the one, perf_counter the other).

    The two move together except when the wall clock is stepped; the tightest of a few
    bracketed readings is kept.
    """
    best: tuple[int, int] | None = None
    for _ in range(20):
        before = time.perf_counter_ns()
        wall = time.time_ns()
        after = time.perf_counter_ns()
        if best is None or after - before < best[0]:
            best = (after - before, wall - (before + after) // 2)
    assert best is not None
    return best[1]


def summary(values_ns: Iterable[int]) -> dict[str, float]:
    ms = [e / 1e6 for e in values_ns]
    return {
        "pairs": len(ms),
        "p50_ms": pct(ms, 0.5),
        "p99_ms": pct(ms, 0.99),
        "max_ms": max(ms) if ms else float("nan"),
        "min_ms": min(ms) if ms else float("nan"),
    }


def pair(
    reported: Iterable[Reported], wire: dict[str, tuple[int, int]], offset_ns: int
) -> dict[str, Any]:
    """Per message, reported - wire RTT, for all measurements and for the kept (untainted)
    ones; and where it went: before the request reached the kernel (send side) and after the
    reply did (receive side)."""
    every: list[int] = []
    kept: list[int] = []
    send_side: list[int] = []
    receive_side: list[int] = []
    reported_ms: list[float] = []
    wire_ms: list[float] = []
    unpaired = 0
    tainted = 0
    for r in reported:
        on_wire = wire.get(r.key) if r.key is not None else None
        if on_wire is None:
            unpaired += 1
            continue
        request_ns, reply_ns = on_wire
        error = r.rtt_ns - (reply_ns - request_ns)
        every.append(error)
        start = r.start_ns + offset_ns
        send_side.append(request_ns - start)
        receive_side.append(start + r.rtt_ns - reply_ns)
        reported_ms.append(r.rtt_ns / 1e6)
        wire_ms.append((reply_ns - request_ns) / 1e6)
        if r.kept:
            kept.append(error)
        else:
            tainted += 1
    return {
        "measured": len(every) + unpaired,
        "unpaired": unpaired,
        "tainted_fraction": tainted / len(every) if every else 0.0,
        "error": summary(every),
        "error_kept": summary(kept),
        # Kept (exported) yet inflated beyond the 5 ms taint rule: what the lag rule missed.
        "kept_over_5ms": sum(e > 5_000_000 for e in kept),
        "send_side": summary(send_side),
        "receive_side": summary(receive_side),
        "reported_rtt_p50_ms": pct(reported_ms, 0.5),
        "reported_rtt_p99_ms": pct(reported_ms, 0.99),
        "wire_rtt_p50_ms": pct(wire_ms, 0.5),
        "wire_rtt_p99_ms": pct(wire_ms, 0.99),
    }


def bare_records(path: Path) -> list[Reported]:
    rows = []
    for line in path.read_text().splitlines():
        key, start, rtt = line.split("\t")
        rows.append(Reported(key, int(start), int(rtt)))
    return rows


async def measure_size(count: int, seconds: float, workdir: Path) -> dict[str, Any]:
    children: list[asyncio.subprocess.Process] = []
    try:
        return await _measure_size(count, seconds, workdir, children)
    except BaseException:
        # A failed run must not leave tcpdump capturing or the servers holding sessions.
        for proc in children:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        raise


async def _measure_size(
    count: int, seconds: float, workdir: Path, children: list[asyncio.subprocess.Process]
) -> dict[str, Any]:
    limit = raise_nofile(count)
    echo, url = await start_echo()
    children.append(echo)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    pcap = workdir / f"wire-{count}.pcap"
    capture = await Capture.start(port, pcap)
    children.append(capture.proc)
    # Settling after all sessions are up (first messages, the heap freeze); the bare client's
    # window opens on SIGUSR1 at the same moment as probed's.
    warmup = 3.0 if seconds >= 10 else 1.0
    records = workdir / f"bare-{count}.tsv"
    bare = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.perf.bare_client", url, str(count), "-1",
        str(seconds), str(records),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    children.append(bare)
    assert bare.stdout is not None
    await bare.stdout.readline()  # "waiting for SIGUSR1": its handler is in place
    recorder = Recorder()
    recorder.install()
    config = workdir / "probed.yaml"
    template = f"    message: {{template: '{TEMPLATE}'}}"
    config.write_text(probes_yaml(url, count, location="wire", extra=(template,)))
    daemon = Daemon(load_config(config), config_path=config, listen="127.0.0.1:0")
    run = asyncio.create_task(daemon.run(handle_signals=False))
    started = time.perf_counter()
    try:
        # Polled: "all N sessions up" is no single event. Bounded: a size this machine cannot
        # hold is measured with the sessions it has, and says how many that was.
        give_up = started + 60 + count / 100
        while (up := sum(p.status.up for p in daemon.exposition.probes())) < count:
            if time.perf_counter() > give_up:
                break
            await asyncio.sleep(0.05)
        all_up_s = time.perf_counter() - started
        await asyncio.sleep(warmup)
        lag = LagSampler()
        lag_task = asyncio.create_task(lag.run())
        bare.send_signal(signal.SIGUSR1)
        recorder.active = True
        load_start = os.getloadavg()[0]
        pids = {
            "probed": os.getpid(),
            "bare": bare.pid,
            "echo_server": echo.pid,
            "tcpdump": capture.proc.pid,
        }
        sched_start = {name: schedstat(pid) for name, pid in pids.items()}
        pressure_start = cpu_pressure_us()
        await asyncio.sleep(seconds)
        pressure_end = cpu_pressure_us()
        # The share of the window in which something on the machine waited for a CPU.
        pressure = (
            None
            if pressure_start is None or pressure_end is None
            else round((pressure_end - pressure_start) / 1e6 / seconds, 3)
        )
        sched = {
            name: sched_delta(sched_start[name], schedstat(pid), seconds)
            for name, pid in pids.items()
        }
        recorder.active = False
        load_end = os.getloadavg()[0]
        lag_task.cancel()
        # Replies to the last messages of the window are in flight: let them land on the wire.
        await asyncio.sleep(1.0)
    finally:
        daemon.stop()
        await run
        recorder.uninstall()
    out, _ = await bare.communicate()
    capture_counts = await capture.stop()
    echo.terminate()
    await echo.wait()
    parse_start = time.perf_counter()
    wire, wire_counts = wire_times(pcap, port)
    parse_s = time.perf_counter() - parse_start
    probed_rows = [
        Reported(message_key(data), start, end - start, kept)
        for data, start, end, kept in recorder.rows
    ]
    offset = realtime_offset_ns()
    pcap_mb = pcap.stat().st_size / 1e6
    pcap.unlink()
    return {
        "sessions": count,
        "seconds": seconds,
        "load_average_1m": [load_start, load_end],
        "nofile_limit": list(limit),
        "all_sessions_up_s": round(all_up_s, 2),
        "sessions_up": up,
        # probed's own state in the window: its loop's lag and its share of one core.
        "loop_lag_p99_ms": pct(lag.lags_ms, 0.99),
        "sched": sched,
        "cpu_pressure_some": pressure,
        "probed": pair(probed_rows, wire, offset),
        "bare": pair(bare_records(records), wire, offset),
        "bare_summary": json.loads(out.decode().strip().splitlines()[-1]),
        "tcpdump": capture_counts,
        "capture": {**wire_counts, "pcap_mb": round(pcap_mb, 1), "parse_s": round(parse_s, 1)},
    }


def markdown(results: list[dict[str, Any]]) -> str:
    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> str:
        return f"| {label} | " + " | ".join(fn(r) for r in results) + " |"

    def err(side: str, which: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            e = r[side][which]
            if not e["pairs"]:
                return "-"
            return f"{e['p50_ms']:.3f} / {e['p99_ms']:.3f} / {e['max_ms']:.2f}"

        return cell

    rows = [
        "| sessions | " + " | ".join(f"{r['sessions']:,}" for r in results) + " |",
        "|---|" + "---|" * len(results),
        row("probed error, all: p50 / p99 / max (ms)", err("probed", "error")),
        row("probed error, kept (exported): p50 / p99 / max (ms)", err("probed", "error_kept")),
        row("bare client error: p50 / p99 / max (ms)", err("bare", "error")),
        row("probed send side: p50 / p99 / max (ms)", err("probed", "send_side")),
        row("probed receive side: p50 / p99 / max (ms)", err("probed", "receive_side")),
        row("bare send side: p50 / p99 / max (ms)", err("bare", "send_side")),
        row("bare receive side: p50 / p99 / max (ms)", err("bare", "receive_side")),
        row(
            "probed measurements tainted (withheld)",
            lambda r: f"{100 * r['probed']['tainted_fraction']:.1f}%",
        ),
        row(
            "probed kept (exported) but inflated > 5 ms",
            lambda r: f"{r['probed'].get('kept_over_5ms', '?')}",
        ),
        row(
            "pairs probed / bare (unpaired)",
            lambda r: (
                f"{r['probed']['error']['pairs']:,} / {r['bare']['error']['pairs']:,} "
                f"({r['probed']['unpaired']} / {r['bare']['unpaired']})"
            ),
        ),
        row(
            "wire RTT p50 / p99, probed's messages (ms)",
            lambda r: (
                f"{r['probed']['wire_rtt_p50_ms']:.3f} / {r['probed']['wire_rtt_p99_ms']:.3f}"
            ),
        ),
        row(
            "reported RTT p50 / p99 probed / bare (ms)",
            lambda r: " ; ".join(
                f"{r[side]['reported_rtt_p50_ms']:.2f} / {r[side]['reported_rtt_p99_ms']:.2f}"
                for side in ("probed", "bare")
            ),
        ),
        row(
            "tcpdump: captured / dropped by kernel",
            lambda r: (
                f"{r['tcpdump'].get('captured', 0):,} / "
                f"{r['tcpdump'].get('dropped_by_kernel', '?')}"
            ),
        ),
        row(
            "sessions up / after (s)",
            lambda r: f"{r['sessions_up']:,} / {r['all_sessions_up_s']:.1f}",
        ),
        row(
            "probed: loop lag p99 (ms)",
            lambda r: f"{r['loop_lag_p99_ms']:.1f}",
        ),
        row(
            "CPU, % of a core: probed / bare / echo server / tcpdump",
            lambda r: " / ".join(
                f"{100 * r['sched'][p]['cpu_share']:.0f}"
                for p in ("probed", "bare", "echo_server", "tcpdump")
            ),
        ),
        row(
            "waiting for a CPU, ms per timeslice: probed / bare / echo / tcpdump",
            lambda r: " / ".join(
                f"{r['sched'][p]['runqueue_wait_per_slice_ms']:.2f}"
                for p in ("probed", "bare", "echo_server", "tcpdump")
            ),
        ),
        row(
            "machine: share of the window some task waited for a CPU (PSI)",
            lambda r: (
                "-" if r["cpu_pressure_some"] is None else f"{100 * r['cpu_pressure_some']:.0f}%"
            ),
        ),
        row(
            "load average (1 min) at start / end of the window",
            lambda r: " / ".join(f"{x:.1f}" for x in r["load_average_1m"]),
        ),
    ]
    return "\n".join(rows) + "\n"


async def main(sizes: list[int], seconds: float, workdir: Path) -> list[dict[str, Any]]:
    logs.configure("error", json=True)
    results = []
    for count in sizes:
        result = await measure_size(count, seconds, workdir)
        print(json.dumps(result), file=sys.stderr, flush=True)
        results.append(result)
    return results


def cli(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1,1000,10000")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window per size")
    parser.add_argument("--quick", action="store_true", help="2 sessions for 2 s")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--workdir", type=Path, help="where the pcap goes (default: a temp dir)")
    args = parser.parse_args(argv)
    sizes = [2] if args.quick else [int(s) for s in args.sizes.split(",")]
    seconds = 2.0 if args.quick else args.seconds
    import uvloop

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        try:
            results = uvloop.run(main(sizes, seconds, Path(tmp)))
        except CaptureUnavailable as exc:
            print(f"capture unavailable: {exc}", file=sys.stderr)
            sys.exit(SKIP_EXIT)
    table = markdown(results)
    print(table)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"python": sys.version, "cpus": os.cpu_count(), "results": results}, indent=1
            )
            + "\n"
        )
    if args.markdown:
        args.markdown.write_text(table)
    return results


if __name__ == "__main__":
    cli()
