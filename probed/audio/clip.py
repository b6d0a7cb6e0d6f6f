"""A speech clip ready to stream: decoded, mono, resampled, with its speech boundaries.

All of this happens when a probe is built, never while it measures: decoding and resampling a
clip takes milliseconds of CPU that would otherwise show up as pacing lateness.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile
import soxr

from probed.audio.encoding import to_int16
from probed.audio.errors import AudioError
from probed.audio.vad import speech_bounds

MIN_RATE = 8000
MAX_RATE = 192_000
# Utterances, not podcasts: a long file is almost certainly the wrong file.
MAX_SECONDS = 120.0


@dataclass(frozen=True, eq=False)
class Clip:
    id: str
    transcript: str
    samples: npt.NDArray[np.int16]
    rate: int
    speech_start: float
    speech_end: float
    source: str

    @property
    def duration(self) -> float:
        return len(self.samples) / self.rate


def _decode(path: Path) -> tuple[npt.NDArray[np.float32], int]:
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        raise AudioError(f"{path}: not a readable audio file ({exc})") from None
    mono: npt.NDArray[np.float32] = data.mean(axis=1, dtype=np.float32)
    return mono, int(rate)


def load_clip(
    path: Path,
    transcript: str,
    *,
    rate: int = 16000,
    clip_id: str | None = None,
    speech: tuple[float, float] | None = None,
    expect_rate: int | None = None,
) -> Clip:
    """Decode `path` and resample it to `rate` Hz.

    `speech` gives known boundaries (from a manifest, in seconds); without it they are detected
    from the audio. `expect_rate` makes a file whose rate differs from what its manifest
    declares an error rather than a silent resample.
    """
    if not transcript.strip():
        raise AudioError(f"{path}: the transcript is empty")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"target sample rate {rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
    mono, file_rate = _decode(path)
    if expect_rate is not None and file_rate != expect_rate:
        raise AudioError(
            f"{path}: sample rate is {file_rate} Hz but the manifest says {expect_rate} Hz"
        )
    if not MIN_RATE <= file_rate <= MAX_RATE:
        raise AudioError(f"{path}: unsupported sample rate {file_rate} Hz")
    if mono.size == 0:
        raise AudioError(f"{path}: holds no audio")
    seconds = mono.size / file_rate
    if seconds > MAX_SECONDS:
        raise AudioError(f"{path}: {seconds:.1f} s long; clips are limited to {MAX_SECONDS:.0f} s")
    if file_rate != rate:
        mono = soxr.resample(mono, file_rate, rate, quality="HQ").astype(np.float32)
    if speech is None:
        found = speech_bounds(mono, rate)
        if found is None:
            raise AudioError(f"{path}: no speech found (the file is silent or nearly so)")
        speech = found
    start, end = speech
    if not 0.0 <= start < end <= seconds + 1e-3:
        raise AudioError(
            f"{path}: speech boundaries {start}-{end} s do not fit a {seconds:.3f} s clip"
        )
    return Clip(
        id=clip_id or path.stem,
        transcript=transcript.strip(),
        samples=to_int16(mono),
        rate=rate,
        speech_start=start,
        speech_end=end,
        source=str(path),
    )
