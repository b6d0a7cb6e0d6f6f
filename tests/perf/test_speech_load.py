"""Pacing under load: 100 concurrent speech streams against the emulator's fast mode.

The emulator runs in its own process (fast mode: endpointing only, manifest transcripts), so
what is measured is the client: how late each 20 ms audio chunk left against its absolute
deadline, with 100 streams (5,000 chunks a second) on one event loop. Figures are printed.
"""

from __future__ import annotations

import asyncio
import collections
import os

import pytest

from probed.speech import UtteranceResult, run_utterance
from tests.perf.speech_helpers import emulator_process, percentile, summary_ms
from tests.targets.stt_client import MANIFEST, adapter_for, audio, session

pytestmark = pytest.mark.perf

STREAMS = int(os.environ.get("PROBED_SPEECH_STREAMS", "100"))
UTTERANCES = int(os.environ.get("PROBED_SPEECH_UTTERANCES", "2"))


async def streams_against_fast_mode() -> None:
    clip_ids = [e.id for e in MANIFEST.entries if e.id != "long_request"]
    async with emulator_process("--protocol", "deepgram", "--fast", "--delay", "0.1") as url:
        # Built before measuring, as a probe builds its audio: decoding and encoding on the loop
        # while other streams are paced would show up as their lateness.
        adapter = adapter_for("deepgram", url)
        prepared = {i: audio(i, adapter, trailing=1.0) for i in clip_ids}

        async def stream(index: int) -> list[UtteranceResult]:
            # Start times spread over a second and, within the 20 ms chunk period, at distinct
            # phases, as independent probes would be: the streams do not all wake at once.
            await asyncio.sleep(index * (1 / STREAMS + 0.0002))
            adapter = adapter_for("deepgram", url)
            results = []
            async with session(adapter) as held:
                for n in range(UTTERANCES):
                    clip = prepared[clip_ids[(index + n) % len(clip_ids)]]
                    results.append(await run_utterance(held, adapter, clip, "vad"))
            return results

        runs = await asyncio.gather(*(stream(i) for i in range(STREAMS)))
    results = [r for run in runs for r in run]
    lags = [lag for r in results for lag in r.send_lag]
    finals = [r.final_s for r in results if r.final_s is not None]
    outcomes = collections.Counter(r.outcome for r in results)
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"\n[{loop}] {STREAMS} streams x {UTTERANCES} utterances, deepgram, 20 ms chunks, vad")
    print(f"send lag: {summary_ms(lags)}")
    print(f"final latency (emulator: 0.3 s endpointing + 0.1 s delay): {summary_ms(finals)}")
    print(f"outcomes: {dict(outcomes)}")
    assert outcomes["ok"] == len(results), outcomes
    assert percentile(lags, 99) < 0.050


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_concurrent_streams_keep_their_pacing(loop: str) -> None:
    """The daemon runs on uvloop; the stock loop is measured too, for comparison."""
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(streams_against_fast_mode())
    else:
        asyncio.run(streams_against_fast_mode())
