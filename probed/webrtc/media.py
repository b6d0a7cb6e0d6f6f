"""Outgoing audio: a paced track that plays a PCM source and splices in the known signal.

Frames leave on absolute deadlines (``t0 + n * ptime``), like a microphone; a late loop makes a
frame late (measured as lateness) but never shifts the schedule of the frames after it.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from typing import Any, Protocol

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from probed.webrtc.signal import SAMPLE_RATE, Samples

PTIME = 0.020
FRAME_SAMPLES = round(SAMPLE_RATE * PTIME)
_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


class PcmSource(Protocol):
    """Mono float32 PCM at 48 kHz in [-1, 1]; fixtures plug in here."""

    def read(self, samples: int) -> Samples: ...


class NoiseSource:
    """Quiet noise: a stand-in for room tone or speech that keeps the codec busy."""

    def __init__(self, level: float = 0.02, seed: int = 0) -> None:
        self._level = level
        self._rng = np.random.default_rng(seed)

    def read(self, samples: int) -> Samples:
        return (self._rng.standard_normal(samples) * self._level).astype(np.float32)


class LoopedPcm:
    """Plays a clip over and over (a decoded fixture, for example).

    ``pcm`` is mono float in [-1, 1] at ``sample_rate``; other rates are converted to 48 kHz
    once, here, with ffmpeg's resampler (already present as aiortc's codec library).
    """

    def __init__(self, pcm: npt.NDArray[np.floating[Any]], sample_rate: int = SAMPLE_RATE) -> None:
        if len(pcm) == 0:
            raise ValueError("empty clip")
        mono = np.asarray(pcm, dtype=np.float32)
        self._pcm = mono if sample_rate == SAMPLE_RATE else to_48k(mono, sample_rate)
        self._pos = 0

    def read(self, samples: int) -> Samples:
        out = np.empty(samples, dtype=np.float32)
        filled = 0
        while filled < samples:
            take = min(samples - filled, len(self._pcm) - self._pos)
            out[filled : filled + take] = self._pcm[self._pos : self._pos + take]
            filled += take
            self._pos = (self._pos + take) % len(self._pcm)
        return out


SignalSent = Callable[[int, int], None]  # (signal id, perf_counter_ns when its first frame left)


class ProbeAudioTrack(MediaStreamTrack):
    """Paced 20 ms frames from ``source``; every ``interval`` seconds the signal replaces it.

    The signal starts on a frame boundary, so the time its first frame is handed to the sender
    is the time its onset left. ``lateness`` keeps how late each frame left against its deadline.
    """

    kind = "audio"

    def __init__(
        self,
        source: PcmSource,
        signal: Samples,
        *,
        interval: float,
        on_signal: SignalSent,
        first_signal_after: float = 0.5,
        on_lateness: Callable[[float], None] = lambda _s: None,
    ) -> None:
        super().__init__()
        if interval * SAMPLE_RATE < len(signal) + FRAME_SAMPLES:
            raise ValueError("signal interval is shorter than the signal")
        self._source = source
        self._signal = signal
        self._every = max(1, round(interval / PTIME))
        self._first = max(0, round(first_signal_after / PTIME))
        self._on_signal = on_signal
        self._on_lateness = on_lateness
        self._frame = 0
        self._start_ns: int | None = None
        self._signal_pos: int | None = None  # samples of the current signal already sent
        self._signal_id = 0
        self.enabled = True  # off: the source plays without signals

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.perf_counter_ns()
        if self._start_ns is None:
            self._start_ns = now
        deadline = self._start_ns + int(self._frame * PTIME * 1e9)
        if deadline > now:
            await asyncio.sleep((deadline - now) / 1e9)
        pcm, onset = self._next_pcm()
        frame = av.AudioFrame.from_ndarray(
            (np.clip(pcm, -1.0, 1.0) * 32767).astype(np.int16).reshape(1, -1),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._frame * FRAME_SAMPLES
        frame.time_base = _TIME_BASE
        self._frame += 1
        left = time.perf_counter_ns()
        self._on_lateness(max(0, left - deadline) / 1e9)
        if onset:
            self._on_signal(self._signal_id, left)
        return frame

    def _next_pcm(self) -> tuple[Samples, bool]:
        pcm = self._source.read(FRAME_SAMPLES)
        onset = False
        n = self._frame
        if (
            self._signal_pos is None
            and self.enabled
            and n >= self._first
            and (n - self._first) % self._every == 0
        ):
            self._signal_pos = 0
            self._signal_id += 1
            onset = True
        if self._signal_pos is not None:
            part = self._signal[self._signal_pos : self._signal_pos + FRAME_SAMPLES]
            pcm[: len(part)] = part
            self._signal_pos += len(part)
            if self._signal_pos >= len(self._signal):
                self._signal_pos = None
        return pcm, onset


def to_48k(pcm: Samples, sample_rate: int) -> Samples:
    """Mono float PCM at any rate, resampled to 48 kHz."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = 0
    frame.time_base = fractions.Fraction(1, sample_rate)
    out = [to_mono(f) for f in [*resampler.resample(frame), *resampler.resample(None)]]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def to_mono(frame: av.AudioFrame) -> Samples:
    """An s16 (packed, any channel count) or float frame as mono float32 in [-1, 1]."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    planar = frame.format.is_planar
    mono = data.mean(axis=0) if planar else data.reshape(-1, channels).mean(axis=1)
    if np.issubdtype(data.dtype, np.integer):
        mono = mono / 32768.0
    return np.asarray(mono, dtype=np.float32)
