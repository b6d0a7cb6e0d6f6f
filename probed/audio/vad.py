"""Where speech starts and ends in a clean clip, from its energy.

The same function measures the bundled fixtures when they are generated and a user's own clip
when it is loaded, so both get their speech boundaries by one rule. It is meant for clean,
close-miked speech (synthesised or recorded for the probe), not for noisy field audio.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FRAME_SECONDS = 0.010
# A frame is speech when it is within RELATIVE_DB of the loudest frame and above an absolute
# floor: relative, so that a quiet recording still has boundaries; floored, so that the
# dither or hiss of a silent stretch never counts as speech.
RELATIVE_DB = 35.0
FLOOR_DBFS = -50.0


def frame_levels(samples: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float64]:
    """RMS level in dBFS of each whole 10 ms frame (samples are floats in [-1, 1])."""
    size = max(1, round(rate * FRAME_SECONDS))
    count = len(samples) // size
    if count == 0:
        return np.zeros(0, dtype=np.float64)
    frames = samples[: count * size].astype(np.float64).reshape(count, size)
    # einsum rather than mean(frames * frames): half the cost on the short blocks an emulator
    # stream feeds fifty times a second (no temporary, one call).
    rms = np.sqrt(np.einsum("ij,ij->i", frames, frames) / size)
    levels: npt.NDArray[np.float64] = 20.0 * np.log10(np.maximum(rms, 1e-10))
    return levels


def speech_bounds(samples: npt.NDArray[np.float32], rate: int) -> tuple[float, float] | None:
    """(start, end) of speech in seconds, rounded to the millisecond; None if there is none."""
    levels = frame_levels(samples, rate)
    if levels.size == 0:
        return None
    threshold = max(FLOOR_DBFS, float(levels.max()) - RELATIVE_DB)
    loud = np.flatnonzero(levels > threshold)
    if loud.size == 0:
        return None
    start = float(loud[0]) * FRAME_SECONDS
    end = min((float(loud[-1]) + 1.0) * FRAME_SECONDS, len(samples) / rate)
    return round(start, 3), round(end, 3)
