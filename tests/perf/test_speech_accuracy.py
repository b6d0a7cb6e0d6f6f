"""The probe against each emulator with the real recogniser: latency tracking and WER per clip.

For each protocol, the emulator (its own process, pocketsphinx) adds 0, 0.25 and 0.5 s before
each final; the probe's flush-mode final latency must follow that delay with a small, steady
base (recognition finishing plus the loopback). VAD mode adds the endpointing silence. Then WER
per fixture. Figures are printed for quoting; the run takes a minute or two.
"""

from __future__ import annotations

import asyncio
import statistics

import pytest

from probed.speech import Mode, UtteranceResult, run_utterance
from tests.perf.speech_helpers import emulator_process, summary_ms
from tests.targets.stt_client import MANIFEST, adapter_for, audio, session

pytestmark = pytest.mark.perf

SHORT = ["lights_on", "stop_music", "run_tests", "users_question", "open_file", "weather_question"]
DELAYS = (0.0, 0.25, 0.5)


async def series(
    protocol: str, delay: float, mode: Mode, clip_ids: list[str], *extra: str
) -> list[UtteranceResult]:
    """One held session; a first warm-up utterance (worker start, model load) is left out."""
    async with emulator_process("--protocol", protocol, "--delay", str(delay), *extra) as url:
        adapter = adapter_for(protocol, url)
        prepared = [audio(c, adapter, trailing=1.5) for c in ["stop_music", *clip_ids]]
        async with session(adapter) as held:
            results = [
                await run_utterance(held, adapter, clip, mode, final_timeout=10)
                for clip in prepared
            ]
    return results[1:]


async def protocol_figures(protocol: str) -> list[str]:
    lines = []
    bases: list[float] = []
    for delay in DELAYS:
        results = await series(protocol, delay, "flush", SHORT)
        finals = [r.final_s for r in results if r.final_s is not None]
        assert len(finals) == len(results), [r.outcome for r in results]
        base = [f - delay for f in finals]
        bases.extend(base)
        lines.append(f"{protocol:10} flush delay={delay:.2f}s final: {summary_ms(finals)}")
        lines.append(f"{protocol:10} flush delay={delay:.2f}s final-delay: {summary_ms(base)}")
        print("\n".join(lines[-2:]), flush=True)
    vad = await series(protocol, 0.0, "vad", SHORT)
    vad_finals = [r.final_s for r in vad if r.final_s is not None]
    lines.append(f"{protocol:10} vad   delay=0.00s final: {summary_ms(vad_finals)}")
    lines.append(
        f"{protocol:10} base over all flush runs: mean {statistics.fmean(bases) * 1000:.1f} ms,"
        f" sd {statistics.pstdev(bases) * 1000:.1f} ms"
    )
    # The base must not depend on the delay: the probe measures what the provider adds.
    n = len(SHORT)
    medians = [statistics.median(bases[i : i + n]) for i in range(0, len(bases), n)]
    lines.append(f"{protocol:10} median base per delay: {[round(m * 1000, 1) for m in medians]} ms")
    assert max(medians) - min(medians) < 0.1
    return lines


async def wer_table() -> list[str]:
    ids = [e.id for e in MANIFEST.entries]
    groups = [ids[i::2] for i in range(2)]
    runs = await asyncio.gather(*(series("deepgram", 0.0, "flush", g) for g in groups))
    by_id = {r.clip_id: r for run in runs for r in run}
    lines = []
    for entry in MANIFEST.entries:
        r = by_id[entry.id]
        wer = "-" if r.wer is None else f"{r.wer:.2f}"
        lines.append(f"{entry.id:18} {entry.voice:4} WER {wer:5} {r.outcome:8} {r.final_text!r}")
    wers = [r.wer for r in by_id.values() if r.wer is not None]
    lines.append(f"mean WER over {len(wers)} clips: {statistics.fmean(wers):.3f}")
    return lines


def test_latency_tracks_the_emulator_delay_and_wer_per_clip() -> None:
    pytest.importorskip("pocketsphinx")

    async def main() -> list[str]:
        # One protocol at a time: concurrent recognisers would compete for the two cores and
        # their backlog would show up as latency.
        lines = []
        for protocol in ("deepgram", "assemblyai", "generic"):
            lines += await protocol_figures(protocol)
        return lines + await wer_table()

    print("\n" + "\n".join(asyncio.run(main())))


def test_fast_mode_isolates_the_probes_own_error() -> None:
    """Without a recogniser the emulator answers a flush at once: what is left is the probe."""

    async def one(protocol: str) -> list[str]:
        lines, bases = [], []
        for delay in DELAYS:
            results = await series(protocol, delay, "flush", SHORT * 2, "--fast")
            finals = [r.final_s for r in results if r.final_s is not None]
            assert len(finals) == len(results)
            bases += [f - delay for f in finals]
            lines.append(f"{protocol:10} fast flush delay={delay:.2f}s final: {summary_ms(finals)}")
        lines.append(f"{protocol:10} fast final-delay, all runs: {summary_ms(bases)}")
        assert statistics.median(bases) < 0.05
        return lines

    async def main() -> list[str]:
        per = await asyncio.gather(*(one(p) for p in ("deepgram", "assemblyai", "generic")))
        return [line for lines in per for line in lines]

    print("\n" + "\n".join(asyncio.run(main())))
