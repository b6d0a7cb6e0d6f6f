"""The probe's own speaker: when the user would hear the agent's answer.

Providers send response audio faster than real time, so the arrival of a chunk is not the
moment it is heard. Chunks play back to back at the output rate, each starting when it arrives
or when the previous one has finished, whichever is later: that is the playback clock. The turn
latency a user feels ends at the first non-silent instant on that clock (agents often lead with
silence or comfort noise).
"""

from __future__ import annotations

import numpy as np

FRAME_SECONDS = 0.005


class Playback:
    def __init__(self, rate: int, *, threshold_dbfs: float = -45.0) -> None:
        if rate <= 0:
            raise ValueError("the output sample rate must be > 0")
        self.rate = rate
        # RMS amplitude (PCM16 units) above which a 5 ms frame counts as sound.
        self.threshold = 32768.0 * 10 ** (threshold_dbfs / 20)
        self.first_arrival_ns: int | None = None
        self.first_sound_ns: int | None = None
        self.until_ns: int | None = None
        self.seconds = 0.0

    def add(self, pcm: bytes, arrived_ns: int) -> int | None:
        """Queue a chunk that arrived at `arrived_ns`; returns the first-sound instant if this
        chunk holds it."""
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2")
        if self.first_arrival_ns is None:
            self.first_arrival_ns = arrived_ns
        start = arrived_ns if self.until_ns is None else max(self.until_ns, arrived_ns)
        self.until_ns = start + round(len(samples) * 1e9 / self.rate)
        self.seconds += len(samples) / self.rate
        if self.first_sound_ns is not None or samples.size == 0:
            return None
        frame = max(1, round(self.rate * FRAME_SECONDS))
        count = -(-samples.size // frame)
        padded = np.zeros(count * frame, dtype=np.float64)
        padded[: samples.size] = samples
        rms = np.sqrt(np.mean(padded.reshape(count, frame) ** 2, axis=1))
        loud = np.flatnonzero(rms > self.threshold)
        if loud.size == 0:
            return None
        self.first_sound_ns = start + round(int(loud[0]) * frame * 1e9 / self.rate)
        return self.first_sound_ns

    def stop(self, at_ns: int) -> None:
        """The client flushed its buffer (the agent yielded): nothing plays after `at_ns`."""
        if self.until_ns is not None and self.until_ns > at_ns:
            self.until_ns = at_ns

    def playing(self, now_ns: int) -> bool:
        return self.until_ns is not None and self.until_ns > now_ns
