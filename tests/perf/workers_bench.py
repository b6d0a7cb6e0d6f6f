"""Benchmark: one worker holding S sessions against two workers holding 2S, in one run.

    python -m tests.perf.workers_bench --sessions 1000 --measure 30 --json out.json

Each phase starts `probed run --workers W` (a real parent and real worker processes) with W x S
echo probes (one session each, one message a second) against echo servers sharing one port with
SO_REUSEPORT (so that the echo side does not bound what probed holds), waits for every session,
lets it settle, and then over the measuring window reports, per worker: RTT p50/p99 from the
native histograms of the protobuf exposition (2% buckets; deltas between two scrapes), event-loop
lag p99 (classic buckets: an upper bound) and the share of lag samples over 5 ms, measurements
tainted; the CPU of every process (parent, workers, echo servers, bare client) from /proc; and a
bare uvloop + websockets client holding a few sessions beside it as the machine's floor. The load
average is recorded at the start and the end of each window. `--quick` checks the harness only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from probed.workers.plan import worker_of
from tests.protobuf_reader import fields, varint

PROTOBUF = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(stat[11]) + int(stat[12])) / TICKS


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def config_yaml(port: int, count: int) -> str:
    lines = ["global:", "  labels: {location: bench}", "  log_level: error", "probes:"]
    for i in range(count):
        lines += [
            f"  - name: p{i:05d}",
            "    kind: echo",
            f"    url: ws://127.0.0.1:{port}/",
            "    interval: 1s",
            "    timeout: 5s",
        ]
    return "\n".join(lines) + "\n"


# -- reading the protobuf exposition -------------------------------------------------------------


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _ints(value: int | bytes) -> list[int]:
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        n, pos = varint(value, pos)
        out.append(n)
    return out


def native_buckets(histogram: bytes) -> tuple[int, Counter[int]]:
    """(schema, bucket index -> count) of one native histogram (positive side; RTTs are > 0)."""
    schema, spans, deltas = 0, [], []
    for number, value in fields(histogram):
        if number == 5 and isinstance(value, int):
            schema = _zigzag(value)
        elif number == 12 and isinstance(value, bytes):
            span = dict(fields(value))
            offset, length = span.get(1, 0), span.get(2, 0)
            assert isinstance(offset, int) and isinstance(length, int)
            spans.append((_zigzag(offset), length))
        elif number == 13:
            deltas += [_zigzag(n) for n in _ints(value)]
    counts: Counter[int] = Counter()
    index, count, at = 0, 0, 0
    for n, (offset, length) in enumerate(spans):
        index = offset if n == 0 else index + offset
        for _ in range(length):
            count += deltas[at]
            counts[index] += count
            at += 1
            index += 1
    return schema, counts


def classic_buckets(histogram: bytes) -> dict[float, int]:
    out: dict[float, int] = {}
    for number, value in fields(histogram):
        if number == 1 and isinstance(value, int):
            out[math.inf] = value  # the sample count: the +Inf bucket
        elif number == 3 and isinstance(value, bytes):
            bucket = dict(fields(value))
            count, bound = bucket.get(1, 0), bucket.get(2, 0.0)
            assert isinstance(count, int) and isinstance(bound, float)
            out[bound] = count
    return out


def snapshot(body: bytes, workers: int) -> dict[int, dict[str, Any]]:
    """Per worker: native RTT buckets, lag buckets, tainted and sent counts."""
    per: dict[int, dict[str, Any]] = {
        w: {"rtt": Counter(), "schema": 0, "lag": {}, "tainted": 0.0, "rtt_n": 0}
        for w in range(workers)
    }
    pos = 0
    while pos < len(body):
        length, pos = varint(body, pos)
        message = body[pos : pos + length]
        pos += length
        name = ""
        for number, value in fields(message):
            if number == 1 and isinstance(value, bytes):
                name = value.decode()
            elif number == 4 and isinstance(value, bytes):
                labels: dict[str, str] = {}
                payload: dict[int, int | bytes] = {}
                for n, v in fields(value):
                    if n == 1 and isinstance(v, bytes):
                        pair = dict(fields(v))
                        key, text = pair[1], pair.get(2, b"")
                        assert isinstance(key, bytes) and isinstance(text, bytes)
                        labels[key.decode()] = text.decode()
                    else:
                        payload[n] = v
                _take(per, workers, name, labels, payload)
    return per


def _take(
    per: dict[int, dict[str, Any]],
    workers: int,
    name: str,
    labels: dict[str, str],
    payload: dict[int, int | bytes],
) -> None:
    if name == "probe_message_rtt_seconds" and 7 in payload:
        hist = payload[7]
        assert isinstance(hist, bytes)
        w = worker_of(labels["probe"], workers) if workers > 1 else 0
        schema, counts = native_buckets(hist)
        per[w]["schema"] = schema
        per[w]["rtt"].update(counts)
    elif name == "probed_event_loop_lag_seconds" and 7 in payload:
        hist = payload[7]
        assert isinstance(hist, bytes)
        w = int(labels.get("worker", "0"))
        if workers == 1 or "worker" in labels:
            per[w]["lag"] = classic_buckets(hist)
    elif name == "probe_measurements_tainted_total" and 3 in payload:
        counter = payload[3]
        assert isinstance(counter, bytes)
        value = dict(fields(counter)).get(1, 0.0)
        w = worker_of(labels["probe"], workers) if workers > 1 else 0
        per[w]["tainted"] += value


def native_quantile(counts: Counter[int], schema: int, q: float) -> float:
    total = sum(counts.values())
    if total <= 0:
        return float("nan")
    base = 2 ** (2**-schema)
    seen = 0
    for index in sorted(counts):
        seen += counts[index]
        if seen >= q * total:
            # The bucket (base^(index-1), base^index]: its geometric middle, 2% off at most.
            return float(base ** (index - 0.5))
    return float("nan")


def lag_p99_bound(before: dict[float, int], after: dict[float, int]) -> tuple[float, float]:
    """(upper bound of the p99 lag, share of samples above 5 ms) over the window."""
    bounds = sorted(after)
    delta = {b: after[b] - before.get(b, 0) for b in bounds}
    total = delta[bounds[-1]] if bounds else 0
    if total <= 0:
        return float("nan"), float("nan")
    p99 = next((b for b in bounds if delta[b] >= 0.99 * total), math.inf)
    over5 = 1 - delta.get(0.005, total) / total
    return p99, over5


# -- one phase -----------------------------------------------------------------------------------


async def get(url: str, accept: str = "*/*") -> bytes:
    async with aiohttp.ClientSession() as http, http.get(url, headers={"Accept": accept}) as r:
        return await r.read()


async def sessions_open(url: str) -> int:
    from prometheus_client.parser import text_string_to_metric_families

    text = (await get(f"{url}/metrics")).decode()
    return int(
        sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "probe_connections_open"
        )
    )


def worker_pids(parent: int) -> dict[str, int]:
    pids = {}
    for pid in children(parent):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        index = next(a for a in argv if a.startswith(b"--index=")).split(b"=")[1]
        pids[f"worker {int(index)}"] = pid
    return pids


async def phase(
    workers: int, count: int, echo_port: int, *, bare: int, settle: float, measure: float
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="workers-bench-"))
    cfg = tmp / "probed.yaml"
    cfg.write_text(config_yaml(echo_port, count))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "probed", "run", "-c", str(cfg), "--listen", f"127.0.0.1:{port}",
        "--workers", str(workers), stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    started = time.monotonic()
    try:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                if await sessions_open(url) >= count:
                    break
            if proc.returncode is not None:
                raise RuntimeError("probed exited")
            # Not often: each poll renders every probe's families in every worker.
            await asyncio.sleep(3.0)
        all_up_s = time.monotonic() - started
        bare_proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.perf.bare_client", f"ws://127.0.0.1:{echo_port}/",
            str(bare), str(settle), str(measure + 15), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(settle)
        pids = {"parent": proc.pid} if workers > 1 else {"worker 0": proc.pid}
        if workers > 1:
            pids.update(worker_pids(proc.pid))
        pids["bare client"] = bare_proc.pid
        load_start = loadavg()
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        before = snapshot(await get(f"{url}/metrics", PROTOBUF), workers)
        t0 = time.monotonic()
        await asyncio.sleep(measure)
        after = snapshot(await get(f"{url}/metrics", PROTOBUF), workers)
        wall = time.monotonic() - t0
        cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
        load_end = loadavg()
        out, _ = await bare_proc.communicate()
        bare_result = json.loads(out.decode().strip().splitlines()[-1])
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    per_worker = []
    for w in range(workers):
        rtt = after[w]["rtt"].copy()
        rtt.subtract(before[w]["rtt"])
        n = sum(rtt.values())
        schema = after[w]["schema"]
        lag_p99, over5 = lag_p99_bound(before[w]["lag"], after[w]["lag"])
        tainted = after[w]["tainted"] - before[w]["tainted"]
        per_worker.append(
            {
                "worker": w,
                "rtt_samples": n,
                "rtt_p50_ms": native_quantile(rtt, schema, 0.5) * 1e3,
                "rtt_p99_ms": native_quantile(rtt, schema, 0.99) * 1e3,
                "loop_lag_p99_at_most_ms": lag_p99 * 1e3,
                "lag_samples_over_5ms": over5,
                "tainted": tainted,
                "tainted_share": tainted / (tainted + n) if tainted + n else float("nan"),
            }
        )
    return {
        "workers": workers,
        "sessions": count,
        "all_up_s": round(all_up_s, 1),
        "measured_s": round(wall, 1),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "cpu_share": {k: round((cpu1[k] - cpu0[k]) / wall, 3) for k in pids},
        "per_worker": per_worker,
        "bare_client": {"sessions": bare, **bare_result},
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    echo_port = free_port()
    command = [sys.executable, "-m", "tests.perf.reuseport_echo", str(echo_port)]
    echoes = [
        await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        for _ in range(args.echo_processes)
    ]
    try:
        for echo in echoes:
            assert echo.stdout is not None
            await echo.stdout.readline()
        echo_cpu0 = sum(cpu_seconds(e.pid) for e in echoes)
        t0 = time.monotonic()
        phases = []
        for workers in (1, 2):
            result = await phase(
                workers,
                args.sessions * workers,
                echo_port,
                bare=args.bare,
                settle=args.settle,
                measure=args.measure,
            )
            phases.append(result)
            print(json.dumps(result), flush=True)
        echo_share = (sum(cpu_seconds(e.pid) for e in echoes) - echo_cpu0) / (time.monotonic() - t0)
    finally:
        for echo in echoes:
            echo.terminate()
            await echo.wait()
    return {
        "command": " ".join(sys.argv),
        "cores": len(os.sched_getaffinity(0)),
        "echo_processes": args.echo_processes,
        "echo_cpu_share_whole_run": round(echo_share, 3),
        "phases": phases,
    }


def markdown(result: dict[str, Any]) -> str:
    rows = [
        "| workers / sessions | worker | RTT p50 / p99 (ms) | loop lag p99 (ms, at most) "
        "| lag > 5 ms | tainted | CPU (cores) |",
        "|---|---|---|---|---|---|---|",
    ]
    for ph in result["phases"]:
        for w in ph["per_worker"]:
            cpu = ph["cpu_share"].get(f"worker {w['worker']}", float("nan"))
            rows.append(
                f"| {ph['workers']} / {ph['sessions']} | {w['worker']} | "
                f"{w['rtt_p50_ms']:.2f} / {w['rtt_p99_ms']:.2f} | "
                f"{w['loop_lag_p99_at_most_ms']:g} | {w['lag_samples_over_5ms']:.2%} | "
                f"{w['tainted_share']:.2%} | {cpu:.2f} |"
            )
        bare = ph["bare_client"]
        rows.append(
            f"| {ph['workers']} / {ph['sessions']} | bare client ({bare['sessions']} sessions) | "
            f"{bare['rtt_p50_ms']:.2f} / {bare['rtt_p99_ms']:.2f} | | | | "
            f"{ph['cpu_share']['bare client']:.2f} |"
        )
        if "parent" in ph["cpu_share"]:
            rows.append(
                f"| {ph['workers']} / {ph['sessions']} | parent | | | | | "
                f"{ph['cpu_share']['parent']:.2f} |"
            )
    loads = "; ".join(
        f"{ph['workers']} worker(s): {ph['loadavg_start']} -> {ph['loadavg_end']}"
        for ph in result["phases"]
    )
    return "\n".join(rows) + f"\n\nload average: {loads}\n"


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=1000, help="sessions per worker")
    parser.add_argument("--measure", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=8.0)
    parser.add_argument("--bare", type=int, default=100, help="bare client sessions (the floor)")
    parser.add_argument("--echo-processes", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.measure, args.settle, args.bare = 4, 3.0, 1.0, 4
    result = asyncio.run(main(args))
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    cli()
