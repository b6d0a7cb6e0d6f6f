"""What the voice-agent emulators hear and say: an endpointer, recognisers, intents, audio.

The endpointer runs on the audio clock (samples received), so the emulator ends a turn at the
same audio offset every run and the latency a probe measures against it is the endpointing
silence, the configured processing delay, and nothing random.

Recognisers: `SphinxRecogniser` is real recognition (pocketsphinx with its bundled US English
model) in a worker process, because it holds the GIL for hundreds of milliseconds.
`FixtureRecogniser` is the fast mode: it recognises nothing, it finds which bundled fixture was
spoken from its loudness envelope and returns that fixture's manifest transcript.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import multiprocessing
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from probed.audio.vad import FRAME_SECONDS, frame_levels

if TYPE_CHECKING:
    from probed.audio.clip import Clip

RATE = 16000
FRAME = round(RATE * FRAME_SECONDS)


@dataclass(frozen=True)
class Boundary:
    kind: str  # "start" or "end"
    offset: float  # seconds of audio: where speech began, or the last loud frame


class Endpointer:
    """Speech starts after `min_speech` of loud frames and ends after `silence` of quiet ones."""

    def __init__(
        self, *, silence: float = 0.3, threshold_dbfs: float = -45.0, min_speech: float = 0.05
    ) -> None:
        self.silence_frames = max(1, round(silence / FRAME_SECONDS))
        self.min_frames = max(1, round(min_speech / FRAME_SECONDS))
        self.threshold = threshold_dbfs
        self._pending = np.zeros(0, dtype=np.int16)
        self.frames = 0
        self.in_speech = False
        self._loud = 0
        self._quiet = 0
        self.last_loud = 0.0

    @property
    def position(self) -> float:
        return self.frames * FRAME_SECONDS

    def feed(self, samples: npt.NDArray[np.int16]) -> list[Boundary]:
        data = np.concatenate([self._pending, samples]) if self._pending.size else samples
        whole = len(data) // FRAME * FRAME
        self._pending = data[whole:].copy()
        found: list[Boundary] = []
        for level in frame_levels((data[:whole] / 32768.0).astype(np.float32), RATE):
            self.frames += 1
            loud = level > self.threshold
            if not self.in_speech:
                self._loud = self._loud + 1 if loud else 0
                if self._loud >= self.min_frames:
                    self.in_speech, self._quiet = True, 0
                    self.last_loud = self.position
                    found.append(Boundary("start", (self.frames - self._loud) * FRAME_SECONDS))
                continue
            if loud:
                self._quiet, self.last_loud = 0, self.position
            else:
                self._quiet += 1
                if self._quiet >= self.silence_frames:
                    self.in_speech, self._loud = False, 0
                    found.append(Boundary("end", self.last_loud))
        return found

    def force_end(self) -> Boundary | None:
        if not self.in_speech:
            return None
        self.in_speech, self._loud = False, 0
        return Boundary("end", self.last_loud)


class Recogniser(Protocol):
    label: str

    async def transcribe(self, samples: npt.NDArray[np.int16]) -> str: ...


_POINTS = 40
_FLOOR = -60.0


def _envelope(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.float64] | None:
    levels = np.maximum(frame_levels((samples / 32768.0).astype(np.float32), RATE), _FLOOR)
    loud = np.flatnonzero(levels > -45.0)
    if loud.size < 5:
        return None
    speech = levels[loud[0] : loud[-1] + 1]
    grid = np.linspace(0, len(speech) - 1, _POINTS)
    return np.asarray(np.interp(grid, np.arange(len(speech)), speech), dtype=np.float64)


class FixtureRecogniser:
    """Fast mode: matches the loudness envelope and speech length against the fixtures."""

    label = "fast (fixture matching, manifest transcript, no recognition)"

    def __init__(self, clips: Sequence[Clip]) -> None:
        self._known: list[tuple[Clip, npt.NDArray[np.float64], float]] = []
        for clip in clips:
            envelope = _envelope(clip.samples)
            if envelope is not None:
                self._known.append((clip, envelope, clip.speech_end - clip.speech_start))

    async def transcribe(self, samples: npt.NDArray[np.int16]) -> str:
        envelope = _envelope(samples)
        if envelope is None:
            return ""
        levels = frame_levels((samples / 32768.0).astype(np.float32), RATE)
        loud = np.flatnonzero(levels > -45.0)
        length = (loud[-1] + 1 - loud[0]) * FRAME_SECONDS
        best, best_score = "", math.inf
        for clip, known, known_length in self._known:
            score = float(np.mean(np.abs(envelope - known))) + 20.0 * abs(length - known_length)
            if score < best_score:
                best, best_score = clip.transcript, score
        return best if best_score < 25.0 else ""


def _sphinx_decode(pcm: bytes) -> str:
    # Runs in the worker process; the decoder (and its model) is loaded once per process.
    global _DECODER  # noqa: PLW0603
    if _DECODER is None:
        from pocketsphinx import Decoder

        _DECODER = Decoder(loglevel="FATAL")
    decoder: Any = _DECODER
    decoder.start_utt()
    decoder.process_raw(pcm, False, True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return str(hyp.hypstr) if hyp is not None else ""


_DECODER: Any = None


class SphinxRecogniser:
    """pocketsphinx in one worker process shared by the emulator's sessions."""

    label = "pocketsphinx"

    def __init__(self) -> None:
        # spawn, not fork: the emulator runs inside an event loop (and a test runner's threads).
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn")
        )

    async def warm_up(self) -> None:
        await self.transcribe(np.zeros(RATE // 10, dtype=np.int16))

    async def transcribe(self, samples: npt.NDArray[np.int16]) -> str:
        loop = asyncio.get_running_loop()
        pcm = samples.astype("<i2").tobytes()
        return await loop.run_in_executor(self._pool, _sphinx_decode, pcm)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# -- intents: when the recognised words ask for a tool ------------------------------------

# Homophones too ("and to numbers"): a real recogniser hears "adds two" that way often enough,
# and a voice agent's language model would not be thrown by it either.
_NUMBERS = {"one": 1, "two": 2, "to": 2, "too": 2, "three": 3, "four": 4, "five": 5, "ten": 10}
_VERBS = {
    "adds": "add", "add": "add", "and": "add", "ads": "add", "sums": "add", "subtracts": "subtract",
    "multiplies": "multiply", "divides": "divide", "sorts": "sort", "reads": "read",
}  # fmt: skip
_ASK = re.compile(r"\b(create|write|make)\b.*\bfunction\b(?:\s+that)?\s*(.*)$")


def tool_arguments(transcript: str, properties: Mapping[str, object]) -> dict[str, object] | None:
    """The arguments a request for a function implies, or None when it asks for none.

    "create a function that adds two numbers" -> {"operation": "add", "arity": 2,
    "description": "adds two numbers"}; only the keys the tool declares are kept (all of
    them when it declares none).
    """
    match = _ASK.search(transcript.lower())
    if match is None:
        return None
    rest = match.group(2).strip()
    said = rest.split()
    found: dict[str, object] = {"description": rest}
    for word in said:
        if word in _VERBS and "operation" not in found:
            found["operation"] = _VERBS[word]
        if word in _NUMBERS and "arity" not in found:
            found["arity"] = _NUMBERS[word]
    if not properties:
        return found
    return {k: v for k, v in found.items() if k in properties}


# -- the agent's voice --------------------------------------------------------------------


def answer_audio(
    seconds: float, *, rate: int = 24000, lead_silence: float = 0.1, hz: float = 440.0
) -> bytes:
    """A tone at -12 dBFS after `lead_silence` of digital silence, PCM16 LE mono."""
    lead = np.zeros(round(lead_silence * rate), dtype=np.int16)
    t = np.arange(round(seconds * rate)) / rate
    tone = (0.25 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    return np.concatenate([lead, tone]).astype("<i2").tobytes()


def resample_24k_to_16k(samples: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    import soxr

    out = soxr.resample(samples.astype(np.float32) / 32768.0, 24000, RATE)
    return np.clip(np.round(np.asarray(out) * 32768.0), -32768, 32767).astype(np.int16)
