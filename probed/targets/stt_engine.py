"""What the STT emulators hear: an energy endpointer on the audio clock, and two transcribers.

The endpointer works on audio time (samples received), not wall time, so the emulator endpoints
the same fixture at the same offset every run: the latency a probe measures against it is the
endpointing silence, the recognition time and the configured delay, and nothing random.

Transcribers: `SphinxTranscriber` is a real recogniser (pocketsphinx and its bundled US English
model, offline), run on a worker thread per session since it is CPU-heavy. `FastTranscriber`
recognises nothing: it finds which bundled fixture is being played from its loudness envelope
and returns that fixture's manifest transcript (fast mode, for load tests; labelled as such).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from probed.audio.clip import Clip
from probed.audio.vad import FRAME_SECONDS, frame_levels

RATE = 16000
FRAME = round(RATE * FRAME_SECONDS)


@dataclass(frozen=True)
class Signal:
    """`start`: speech began at `offset`; `end`: speech ended at `offset` (seconds of audio).

    `partial`: another stretch of speech was heard (time for an interim result).
    """

    kind: str
    offset: float


class Endpointer:
    """Speech starts after `min_speech` of loud frames and ends after `silence` of quiet ones."""

    def __init__(
        self,
        *,
        threshold_dbfs: float = -45.0,
        silence: float = 0.5,
        min_speech: float = 0.05,
        partial_every: float = 0.3,
    ) -> None:
        self.threshold = threshold_dbfs
        self.silence_frames = max(1, round(silence / FRAME_SECONDS))
        self.min_speech_frames = max(1, round(min_speech / FRAME_SECONDS))
        self.partial_frames = max(1, round(partial_every / FRAME_SECONDS))
        self._pending = np.zeros(0, dtype=np.int16)
        self.frames = 0  # whole frames consumed
        self.in_speech = False
        self._loud_run = 0
        self._quiet_run = 0
        self._since_partial = 0
        self.speech_start = 0.0
        self.last_loud = 0.0

    @property
    def position(self) -> float:
        return self.frames * FRAME_SECONDS

    def feed(self, samples: npt.NDArray[np.int16]) -> list[Signal]:
        data = np.concatenate([self._pending, samples]) if self._pending.size else samples
        whole = len(data) // FRAME * FRAME
        self._pending = data[whole:].copy()
        if whole == 0:
            return []
        levels = frame_levels((data[:whole] / 32768.0).astype(np.float32), RATE)
        signals: list[Signal] = []
        for level in levels:
            self.frames += 1
            loud = level > self.threshold
            if not self.in_speech:
                self._loud_run = self._loud_run + 1 if loud else 0
                if self._loud_run >= self.min_speech_frames:
                    self.in_speech = True
                    self._quiet_run = self._since_partial = 0
                    self.speech_start = (self.frames - self._loud_run) * FRAME_SECONDS
                    self.last_loud = self.position
                    signals.append(Signal("start", self.speech_start))
                continue
            self._since_partial += 1
            if loud:
                self._quiet_run = 0
                self.last_loud = self.position
            else:
                self._quiet_run += 1
            if self._quiet_run >= self.silence_frames:
                self.in_speech = False
                self._loud_run = 0
                signals.append(Signal("end", self.last_loud))
            elif self._since_partial >= self.partial_frames:
                self._since_partial = 0
                signals.append(Signal("partial", self.position))
        return signals

    def force_end(self) -> Signal | None:
        """End the current turn now (a client's flush); None when no speech is in progress."""
        if not self.in_speech:
            return None
        self.in_speech = False
        self._loud_run = 0
        return Signal("end", self.last_loud)


class Transcriber(Protocol):
    label: str
    # Audio from this long before the detected speech start is fed too.
    pre_roll: float

    def at(self, turn_start: float, position: float) -> None:
        """Where the stream is: the current turn's speech start and the audio heard so far."""

    async def begin(self) -> None: ...

    async def feed(self, samples: npt.NDArray[np.int16]) -> None:
        """Audio of the current turn (queued; recognition may run behind)."""

    async def partial(self) -> str: ...

    async def finish(self) -> str: ...

    async def close(self) -> None: ...


class SphinxTranscriber:
    """pocketsphinx with its bundled US English model, in a worker process per session.

    pocketsphinx holds the GIL while it decodes: on a thread it would still stall the event
    loop (and the pacing of the emulator's own clients in a test) by hundreds of milliseconds.
    The process starts when the session opens and loads the model while the client connects.
    """

    label = "pocketsphinx"
    # The recogniser models the lead-in silence; cutting right at the onset loses phonemes.
    pre_roll = 0.1

    def __init__(self) -> None:
        self._starting = asyncio.create_task(
            asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "probed.targets.sphinx_worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
        )
        self._ask = asyncio.Lock()

    def at(self, turn_start: float, position: float) -> None:
        return None

    async def _write(self, op: bytes, payload: bytes = b"") -> asyncio.subprocess.Process:
        proc = await self._starting
        assert proc.stdin is not None
        proc.stdin.write(op + len(payload).to_bytes(4, "little") + payload)
        await proc.stdin.drain()
        return proc

    async def _request(self, op: bytes) -> str:
        async with self._ask:
            proc = await self._write(op)
            assert proc.stdout is not None
            size = int.from_bytes(await proc.stdout.readexactly(4), "little")
            return (await proc.stdout.readexactly(size)).decode()

    async def begin(self) -> None:
        await self._write(b"S")

    async def feed(self, samples: npt.NDArray[np.int16]) -> None:
        if samples.size:
            await self._write(b"F", samples.astype("<i2").tobytes())

    async def partial(self) -> str:
        return await self._request(b"H")

    async def finish(self) -> str:
        return await self._request(b"E")

    async def close(self) -> None:
        self._starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            proc = await self._starting
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


_FLOOR_DB = -60.0
_MATCH_FRAMES = 30  # 300 ms of speech is enough to tell the fixtures apart
_MAX_SHIFT = 4
_MAX_MEAN_DB_ERROR = 6.0


@dataclass
class _Playing:
    clip: Clip
    words: list[str]
    start: float  # stream offset of the clip's speech start
    emitted: int = 0


class FastIndex:
    """Loudness signatures of the bundled fixtures' first 600 ms of speech, computed once."""

    def __init__(self, clips: Sequence[Clip]) -> None:
        self.clips = list(clips)
        self.signatures: list[npt.NDArray[np.float64]] = []
        for clip in self.clips:
            levels = frame_levels((clip.samples / 32768.0).astype(np.float32), clip.rate)
            first = round(clip.speech_start / FRAME_SECONDS)
            self.signatures.append(np.maximum(levels[first : first + 60], _FLOOR_DB))

    def identify(self, levels: Sequence[float]) -> Clip | None:
        heard = np.maximum(np.array(levels[: _MATCH_FRAMES + _MAX_SHIFT]), _FLOOR_DB)
        if len(heard) < _MATCH_FRAMES:
            return None
        best, best_error = None, _MAX_MEAN_DB_ERROR
        span = _MATCH_FRAMES - _MAX_SHIFT
        for clip, signature in zip(self.clips, self.signatures, strict=True):
            for shift in range(-_MAX_SHIFT, _MAX_SHIFT + 1):
                a = heard[max(0, shift) : max(0, shift) + span]
                b = signature[max(0, -shift) : max(0, -shift) + span]
                if len(a) < span or len(b) < span:
                    continue
                error = float(np.mean(np.abs(a - b)))
                if error < best_error:
                    best, best_error = clip, error
        return best


class FastTranscriber:
    """Fast mode: identifies the fixture by its loudness envelope and returns its transcript.

    Words are revealed in proportion to how much of the fixture's speech has been heard, so a
    turn cut at a mid-sentence pause gets roughly the words before the pause, and the next turn
    the rest. Audio that matches no fixture yields an empty transcript.
    """

    label = "fast (manifest transcript, no recognition)"
    # The signatures start exactly at the speech onset.
    pre_roll = 0.0

    def __init__(self, index: FastIndex) -> None:
        self._index = index
        self._levels: list[float] = []
        self._turn_start = 0.0
        self._position = 0.0
        self._playing: _Playing | None = None

    def at(self, turn_start: float, position: float) -> None:
        """Where the stream is: the current turn's speech start and the audio heard so far."""
        self._turn_start = turn_start
        self._position = position

    async def begin(self) -> None:
        self._levels = []

    async def feed(self, samples: npt.NDArray[np.int16]) -> None:
        levels = frame_levels((samples / 32768.0).astype(np.float32), RATE)
        self._levels.extend(float(x) for x in levels)

    def _spoken(self, playing: _Playing) -> float:
        return playing.clip.speech_end - playing.clip.speech_start

    def _words_due(self, playing: _Playing) -> int:
        spoken = self._spoken(playing)
        fraction = (self._position - playing.start) / spoken if spoken > 0 else 1.0
        if fraction >= 0.9:
            return len(playing.words)
        return min(len(playing.words), max(playing.emitted, round(fraction * len(playing.words))))

    def _current(self) -> _Playing | None:
        playing = self._playing
        # A turn continues the fixture cut by a pause only while that fixture is still playing.
        if playing is not None and (
            playing.emitted >= len(playing.words)
            or self._turn_start > playing.start + self._spoken(playing) + 1.0
        ):
            playing = self._playing = None
        if playing is None:
            clip = self._index.identify(self._levels)
            if clip is not None:
                playing = self._playing = _Playing(clip, clip.transcript.split(), self._turn_start)
        return playing

    async def partial(self) -> str:
        playing = self._current()
        if playing is None:
            return ""
        return " ".join(playing.words[playing.emitted : self._words_due(playing)])

    async def finish(self) -> str:
        playing = self._current()
        if playing is None:
            return ""
        due = self._words_due(playing)
        text = " ".join(playing.words[playing.emitted : due])
        playing.emitted = due
        return text

    async def close(self) -> None:
        return None
