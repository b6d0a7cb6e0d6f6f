"""Audio pacing at scale: N `kind: speech` probes in the daemon, each streaming all the time.

    python -m tests.perf.pacing --streams 200 --minutes 5 \\
        --json tests/perf/results-pacing.json --markdown tests/perf/results-pacing.md

The daemon runs in this process (uvloop) with N speech probes (Deepgram protocol, vad mode)
against STT emulators in fast mode in their own processes. Every probe plays one 100 s fixture
(the bundled clips back to back, built here; clips are limited to 120 s) on a new session every
102 s (`session: per_utterance`), so each stream carries audio nearly all the time, on one
schedule per utterance. A bare uvloop + websockets sender (tests/perf/bare_pacer.py) is the floor,
in the same run: the same chunks, on repeat, on one schedule for the whole run, beside probed and
sending to a sink that discards them (tests/perf/ws_sink.py: on two cores the emulators cannot
also take a second 10,000 chunks a second), or with `--bare after` in a phase of its own against
the same emulators.

Recorded per chunk: the instant the probe's send returned (the pacer is wrapped, nothing else
changes; a context variable names the probe), against the chunk's absolute deadline
t0 + i * 20 ms. Reported per time bin (a minute):
lateness p50 / p99 / p99.9 / max; per stream, drift (tests/perf/pacing_stats.py); the loop lag
p99; the CPU of this process, of the bare sender and of each emulator; and the emulators' own
view: audio received against wall time between a stream's first and latest frame.
`--quick` runs 4 streams for a few seconds: it checks the harness, not the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import soundfile

import probed.speech.utterance as utterance_module
from probed import logs
from probed.adapters import DeepgramAdapter, DeepgramOptions
from probed.audio import load_manifest
from probed.audio.pacer import Pacer
from probed.config import load_config
from probed.connection import Session
from probed.daemon import Daemon
from probed.probes.speech import SpeechProbe
from probed.speech import UtteranceResult
from tests.perf.bench import LagSampler, pct
from tests.perf.pacing_stats import StreamRecord, summarise
from tests.perf.speech_helpers import emulator

CLIP_ID = "stream"
RATE = 16000
CLIP_SECONDS = 100.0
CYCLE = "102s"
# The probe whose utterance is being paced: set around SpeechProbe.utterance, inherited by the
# tasks run_utterance starts.
_probe: contextvars.ContextVar[str] = contextvars.ContextVar("probe", default="?")


def build_stream_fixture(directory: Path, seconds: float) -> None:
    """The bundled clips back to back (each keeps its own 0.3 s pads) until `seconds` long."""
    manifest = load_manifest()
    clips = [manifest.load(e.id, rate=RATE) for e in manifest.entries if e.id != "long_request"]
    parts, words, offset = [], [], 0.0
    first_start = last_end = None
    while offset < seconds:
        for clip in clips:
            if offset + len(clip.samples) / RATE > seconds:
                break
            parts.append(clip.samples)
            words.append(clip.transcript)
            if first_start is None:
                first_start = clip.speech_start
            last_end = offset + clip.speech_end
            offset += len(clip.samples) / RATE
        else:
            continue
        break
    soundfile.write(directory / "stream.flac", np.concatenate(parts), RATE, subtype="PCM_16")
    manifest_json = {
        "version": 1,
        "sample_rate": RATE,
        "clips": [
            {
                "id": CLIP_ID,
                "file": "stream.flac",
                "transcript": " ".join(words),
                "speech_start": first_start,
                "speech_end": last_end,
                "made": "tests/perf/pacing.py: the bundled clips back to back",
            }
        ],
    }
    (directory / "manifest.json").write_text(json.dumps(manifest_json))


def probes_yaml(urls: list[str], count: int, fixtures: Path) -> str:
    lines = ["global:", "  labels: {location: bench}", "  log_level: error", "probes:"]
    for i in range(count):
        lines += [
            f"  - name: s{i:04d}",
            "    kind: speech",
            "    adapter: deepgram",
            f"    url: {urls[i % len(urls)]}",
            f"    fixtures_dir: {fixtures}",
            f"    fixtures: [{CLIP_ID}]",
            "    session: per_utterance",
            f"    interval: {CYCLE}",
            "    trailing_silence: 0.5s",
        ]
    return "\n".join(lines) + "\n"


def record_pacers(streams: list[StreamRecord]) -> None:
    """Wrap the speech probe's pacer: each utterance's origin and each chunk's send instant."""

    class RecordingPacer(Pacer):
        async def run(
            self,
            count: int,
            send: Callable[[int], Awaitable[None]],
            *,
            stop: Callable[[], bool] = lambda: False,
            t0_ns: int | None = None,
        ) -> list[int]:
            t0 = time.perf_counter_ns() if t0_ns is None else t0_ns
            rec = StreamRecord(_probe.get(), t0, self.interval_ns)
            streams.append(rec)
            append, clock = rec.sent_ns.append, time.perf_counter_ns

            async def timed(index: int) -> None:
                await send(index)
                append(clock())

            return await super().run(count, timed, stop=stop, t0_ns=t0)

    setattr(utterance_module, "Pacer", RecordingPacer)  # noqa: B010 (a module, on purpose)
    play = SpeechProbe.utterance

    async def named(self: SpeechProbe, session: Session) -> UtteranceResult:
        token = _probe.set(self._cfg.name)
        try:
            return await play(self, session)
        finally:
            _probe.reset(token)

    setattr(SpeechProbe, "utterance", named)  # noqa: B010


def session_events(exposition: str) -> dict[str, float]:
    """Utterance results and session ends, summed over the probes: what interrupted streams."""
    totals: dict[str, float] = {}
    for line in exposition.splitlines():
        name, _, rest = line.partition("{")
        if name not in ("probe_utterances_total", "probe_disconnects_total"):
            continue
        labels, _, value = rest.rpartition("} ")
        label = next(
            (kv.split("=", 1)[1].strip('"') for kv in labels.split(",")
             if kv.startswith(("result=", "reason="))),
            "?",
        )  # fmt: skip
        key = f"{name.removeprefix('probe_').removesuffix('_total')}:{label}"
        totals[key] = totals.get(key, 0.0) + float(value)
    return {k: v for k, v in sorted(totals.items()) if v}


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    await proc.wait()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def emulator_view(http_base: str, warmup_s: float) -> dict[str, Any]:
    """Per open stream: wall time between first and latest frame minus audio received."""
    async with aiohttp.ClientSession() as client, client.get(f"{http_base}/-/streams") as r:
        streams = await r.json()
    gaps = [
        (s["last_audio_ns"] - s["first_audio_ns"]) / 1e6 - (s["audio_seconds"] - 0.02) * 1e3
        for s in streams
        if s["audio_seconds"] > warmup_s
    ]
    return {
        "streams": len(gaps),
        "audio_seconds_total": sum(s["audio_seconds"] for s in streams),
        "wall_minus_audio_ms_median": float(np.median(gaps)) if gaps else float("nan"),
        "wall_minus_audio_ms_max_abs": float(np.abs(gaps).max()) if gaps else float("nan"),
    }


async def run_bare(
    urls: list[str],
    fixtures: Path,
    *,
    count: int,
    warmup: float,
    seconds: float,
    bin_s: float,
    pids: list[int],
) -> dict[str, Any]:
    """The bare sender's whole run; with the emulators' CPU and the load while it ran."""
    wire_urls = ",".join(
        DeepgramAdapter(DeepgramOptions(url=u)).connect_request().url for u in urls
    )
    emu0, wall0 = [cpu_seconds(p) for p in pids], time.time()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.perf.bare_pacer", wire_urls, str(fixtures),
        CLIP_ID, str(count), str(warmup), str(seconds), str(bin_s),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    wall = time.time() - wall0
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result["emulator_cpu_fraction"] = [
        (cpu_seconds(p) - c) / wall for p, c in zip(pids, emu0, strict=True)
    ]
    result["load_average_at_end"] = os.getloadavg()
    return result


async def run(
    count: int, seconds: float, bin_s: float, emulators: int, bare: str
) -> dict[str, Any]:
    warmup = 3.0
    streams: list[StreamRecord] = []
    record_pacers(streams)
    with tempfile.TemporaryDirectory() as tmp:
        fixtures = Path(tmp)
        build_stream_fixture(fixtures, CLIP_SECONDS)
        async with contextlib.AsyncExitStack() as stack:
            urls, pids = [], []
            for _ in range(emulators):
                url, pid = await stack.enter_async_context(
                    emulator("--protocol", "deepgram", "--fast", "--delay", "0.1")
                )
                urls.append(url)
                pids.append(pid)
            beside = None
            if bare == "beside":
                sink = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tests.perf.ws_sink", stdout=asyncio.subprocess.PIPE
                )
                stack.push_async_callback(stop_process, sink)
                assert sink.stdout is not None
                sink_url = (await sink.stdout.readline()).decode().split()[-1]
                bare_run = run_bare(
                    [sink_url], fixtures, count=count, warmup=warmup, seconds=seconds,
                    bin_s=bin_s, pids=[sink.pid],
                )  # fmt: skip
                beside = asyncio.create_task(bare_run)
            path = fixtures / "probed.yaml"
            path.write_text(probes_yaml(urls, count, fixtures))
            daemon = Daemon(load_config(path), config_path=path, listen="127.0.0.1:0")
            task = asyncio.create_task(daemon.run(handle_signals=False))
            lag = LagSampler()
            lag_task = asyncio.create_task(lag.run())
            # Polled: "every stream has sent its first chunk" is no single event.
            deadline = time.monotonic() + 60
            while len({s.stream for s in streams if s.sent_ns}) < count:
                if time.monotonic() > deadline:
                    names = {s.stream for s in streams}
                    errors = sorted(str(p.status.last_error) for p in daemon.exposition.probes())
                    raise AssertionError(
                        f"{len(streams)} schedules from {len(names)} of {count} probes, "
                        f"{sum(bool(s.sent_ns) for s in streams)} sent audio; errors: {errors[:3]}"
                    )
                await asyncio.sleep(0.1)
            first_t0 = min(s.t0_ns for s in streams)
            await asyncio.sleep(max(0.0, (first_t0 + warmup * 1e9 - time.perf_counter_ns()) / 1e9))
            lag.lags_ms.clear()
            cpu0, emu0, wall0 = time.process_time(), [cpu_seconds(p) for p in pids], time.time()
            load_start = os.getloadavg()
            await asyncio.sleep(seconds)
            wall = time.time() - wall0
            cpu = (time.process_time() - cpu0) / wall
            emu_cpu = [(cpu_seconds(p) - c) / wall for p, c in zip(pids, emu0, strict=True)]
            view = [await emulator_view(u.split("/v1/")[0].replace("ws", "http", 1), warmup)
                    for u in urls]  # fmt: skip
            lag_p99 = pct(lag.lags_ms, 0.99)
            load_end = os.getloadavg()
            events = session_events(daemon.exposition.render("text/plain")[0].decode())
            daemon.stop()
            await task
            lag_task.cancel()
            if beside is not None:
                bare_result = await beside
            elif bare == "after":
                bare_result = await run_bare(
                    urls,
                    fixtures,
                    count=count,
                    warmup=warmup,
                    seconds=seconds,
                    bin_s=bin_s,
                    pids=pids,
                )
            else:
                bare_result = None
    return {
        "streams": count,
        "seconds": seconds,
        "emulators": emulators,
        "bare_mode": bare,
        "load_average_at_start": load_start,
        "load_average_at_end": load_end,
        "probed": summarise(streams, warmup_s=warmup, seconds=seconds, bin_s=bin_s),
        "probed_cpu_fraction": cpu,
        "loop_lag_p99_ms": lag_p99,
        "emulator_cpu_fraction": emu_cpu,
        "emulator_view": view,
        "session_events": events,
        "bare": bare_result,
    }


def markdown(r: dict[str, Any]) -> str:
    p, b = r["probed"], r["bare"]
    lines = [
        f"{r['streams']} streams, {r['seconds']:.0f} s, {r['emulators']} emulator process(es), "
        f"bare sender {r['bare_mode']} probed; load average (1 min) "
        f"{r['load_average_at_start'][0]:.2f} at the start of probed's phase, "
        f"{r['load_average_at_end'][0]:.2f} at its end"
        + (f", {b['load_average_at_end'][0]:.2f} at the end of the bare one" if b else ""),
        "",
        "| time bin | chunks | lateness p50 / p99 / p99.9 / max, probed (ms) | bare (ms) |",
        "|---|---|---|---|",
    ]

    def cells(row: dict[str, float]) -> str:
        return " / ".join(f"{row[k]:.2f}" for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms"))

    bare_bins = b["bins"] if b else []
    for i, row in enumerate(p["bins"]):
        bare_cell = cells(bare_bins[i]) if i < len(bare_bins) else "-"
        start = i * p["bin_s"]
        lines.append(
            f"| {start:.0f}-{start + p['bin_s']:.0f} s | {row['chunks']:,} | {cells(row)} "
            f"| {bare_cell} |"
        )
    bare_all = cells(b["overall"]) if b else "-"
    lines.append(f"| **all** | {p['chunks']:,} | **{cells(p['overall'])}** | {bare_all} |")
    d = p["drift"]
    bd = b["drift"] if b else None

    def pair(src: dict[str, float] | None, key: str, digits: int) -> str:
        if src is None:
            return "-"
        return f"{src[key + '_median']:.{digits}f} / {src[key + '_max_abs']:.{digits}f}"

    lines += [
        "",
        "| | probed | bare |",
        "|---|---|---|",
        "| drift per schedule (send instants against audio sent), median / max abs (ms per "
        f"minute) | {pair(d, 'slope_ms_per_min', 3)} | {pair(bd, 'slope_ms_per_min', 3)} |",
        "| per schedule, wall from first to last send minus the audio between, median / max "
        f"abs (ms) | {pair(d, 'wall_minus_audio_ms', 2)} | {pair(bd, 'wall_minus_audio_ms', 2)} |",
        "| per stream, lateness trend over the whole run, median / max abs (ms per minute) | "
        f"{pair(d, 'trend_ms_per_min', 3)} | {pair(bd, 'trend_ms_per_min', 3)} |",
        f"| schedules judged for drift | {d['schedules_judged']} | "
        f"{bd['schedules_judged'] if bd else '-'} |",
        f"| chunks sent early (before their deadline) | {p['overall']['early']} | "
        f"{b['overall']['early'] if b else '-'} |",
        f"| CPU (fraction of one core) | {r['probed_cpu_fraction']:.2f} | "
        f"{b['cpu_fraction'] if b else float('nan'):.2f} |",
        f"| loop lag p99 (ms) | {r['loop_lag_p99_ms']:.2f} | |",
        "",
        "Probed's utterances and session ends: "
        + (", ".join(f"{k} {v:.0f}" for k, v in r["session_events"].items()) or "none"),
        "",
        "Emulators: CPU "
        + ", ".join(f"{c:.2f}" for c in r["emulator_cpu_fraction"])
        + " of a core each"
        + (
            " (the bare sender's peer: "
            + ", ".join(f"{c:.2f}" for c in b["emulator_cpu_fraction"])
            + ")"
            if b
            else ""
        )
        + "; their view (wall between a stream's first and latest frame minus "
        "the audio received), median / max abs: "
        + ", ".join(
            f"{v['wall_minus_audio_ms_median']:.2f} / {v['wall_minus_audio_ms_max_abs']:.2f} ms "
            f"over {v['streams']} streams"
            for v in r["emulator_view"]
        ),
    ]
    return "\n".join(lines) + "\n"


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--emulators", type=int, default=2, help="emulator processes")
    parser.add_argument(
        "--bare",
        choices=("after", "beside", "none"),
        default="beside",
        help="the bare sender: beside probed, in the same run (default; it sends to a sink that "
        "discards, tests/perf/ws_sink.py), after it against the same emulators, or not at all",
    )
    parser.add_argument("--quick", action="store_true", help="4 streams, 4 s, 1 s bins")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args(argv)
    count, seconds, bin_s = (4, 4.0, 1.0) if args.quick else (args.streams, args.minutes * 60, 60.0)
    emulators = 1 if args.quick else args.emulators
    logs.configure("error", json=True)
    import uvloop

    result = uvloop.run(run(count, seconds, bin_s, emulators, args.bare))
    table = markdown(result)
    print(table)
    if args.json:
        args.json.write_text(
            json.dumps({"python": sys.version, "cpus": os.cpu_count(), **result}, indent=1) + "\n"
        )
    if args.markdown:
        args.markdown.write_text(table)
    return result


if __name__ == "__main__":
    cli()
