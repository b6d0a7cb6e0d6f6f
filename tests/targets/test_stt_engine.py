"""The emulators' endpointer and fast-mode fixture identification, without sockets."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from probed.audio import load_manifest, mulaw_decode, mulaw_encode
from probed.audio.vad import frame_levels
from probed.targets.stt_engine import Endpointer, FastIndex, FastTranscriber

MANIFEST = load_manifest()
CLIPS = MANIFEST.load_all()


def chunks(samples: np.ndarray, size: int = 320) -> list[np.ndarray]:
    return [samples[i : i + size] for i in range(0, len(samples), size)]


def test_endpointer_marks_speech_on_the_audio_clock() -> None:
    rate = 16000
    t = np.arange(rate) / rate
    tone = (0.3 * 32767 * np.sin(2 * np.pi * 200 * t)).astype(np.int16)
    audio = np.concatenate([np.zeros(rate // 2, np.int16), tone, np.zeros(rate, np.int16)])
    endpointer = Endpointer(silence=0.3, partial_every=0.25)
    signals = [s for c in chunks(audio, 333) for s in endpointer.feed(c)]
    kinds = [s.kind for s in signals]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert kinds.count("partial") == 4  # every 0.25 s of a 1 s turn, before its end
    assert signals[0].offset == pytest.approx(0.5, abs=0.011)
    assert signals[-1].offset == pytest.approx(1.5, abs=0.011)
    assert endpointer.force_end() is None


@pytest.mark.parametrize("mulaw_8k", [False, True])
def test_fast_mode_identifies_every_fixture(mulaw_8k: bool) -> None:
    index = FastIndex(CLIPS)
    for clip in CLIPS:
        samples = clip.samples
        if mulaw_8k:
            # What the emulator hears from a client sending mu-law at 8 kHz, back at 16 kHz.
            narrow = soxr.resample(samples, 16000, 8000)
            samples = soxr.resample(mulaw_decode(mulaw_encode(narrow)), 8000, 16000)
        start = round(clip.speech_start * 16000)
        heard = samples[start : start + 8000]
        levels = frame_levels((heard / 32768.0).astype(np.float32), 16000)
        assert index.identify([float(x) for x in levels]) is clip, clip.id


async def test_fast_transcript_is_split_at_a_pause_and_whole_overall() -> None:
    clip = MANIFEST.load("timer_pause")
    index = FastIndex(CLIPS)
    fast = FastTranscriber(index)
    start = round(clip.speech_start * 16000)
    await fast.begin()
    await fast.feed(clip.samples[start : start + 8000])
    # A turn that ended at the pause, about 1.2 s into the speech.
    fast.at(clip.speech_start, clip.speech_start + 1.2)
    first = await fast.finish()
    await fast.begin()
    fast.at(clip.speech_start + 1.7, clip.speech_end)
    second = await fast.finish()
    assert first and second
    assert f"{first} {second}" == clip.transcript
