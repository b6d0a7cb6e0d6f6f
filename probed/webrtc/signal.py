"""The known signal and its detector: a chirp sent at intervals, found again by correlation.

Sans-I/O: samples and their arrival times go in, outcomes come out; no sockets, no clocks. The
detector is fed per RTP packet as packets arrive, so the round trip it reports does not include
any receive buffering of our own.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 48_000
Samples = npt.NDArray[np.float32]

# Below this RMS a window is silence: its normalised correlation is noise divided by noise.
_ENERGY_FLOOR = 1e-3


def chirp(
    duration: float = 0.1,
    low: float = 500.0,
    high: float = 3000.0,
    amplitude: float = 0.5,
    sample_rate: int = SAMPLE_RATE,
) -> Samples:
    """A linear chirp with raised-cosine edges.

    A sweep's autocorrelation has one sharp peak and low sidelobes, so its echo is located to a
    sample even after a speech codec; the band stays inside narrowband telephony (G.711 passes
    it) and the tapered edges keep the codec from smearing clicks around the onset.
    """
    n = round(duration * sample_rate)
    t = np.arange(n) / sample_rate
    phase = 2 * np.pi * (low * t + (high - low) / (2 * duration) * t * t)
    edge = max(1, n // 20)
    envelope = np.ones(n)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(edge) / edge)
    envelope[:edge] = ramp
    envelope[-edge:] = ramp[::-1]
    return (amplitude * envelope * np.sin(phase)).astype(np.float32)


class EchoOutcome(enum.Enum):
    OK = "ok"
    NO_ECHO = "no_echo"  # nothing resembling the signal came back within the window
    WEAK_MATCH = "weak_match"  # something came back, but the peak failed the validity gate
    NO_MEDIA = "no_media"  # no audio at all arrived during the window


@dataclass(frozen=True)
class Detection:
    signal_id: int
    sent_ns: int
    outcome: EchoOutcome
    arrived_ns: int | None  # when the signal's onset arrived (OK only)
    correlation: float  # normalised peak, 0..1; reported for diagnosis even when gated out

    @property
    def roundtrip(self) -> float | None:
        if self.arrived_ns is None:
            return None
        return (self.arrived_ns - self.sent_ns) / 1e9


@dataclass
class _Chunk:
    first_sample: int
    arrived_ns: int
    length: int


class EchoDetector:
    """Finds each expected signal in the received audio by normalised cross-correlation.

    A signal sent at ``sent_ns`` is searched for in the audio that arrived in
    ``[sent_ns, sent_ns + window]``. The onset's arrival time is its packet's arrival time plus
    its offset inside the packet: what a listener with no jitter buffer would hear. The search
    is resolved once audio arrived past the window, or, if the stream stalls, ``grace`` after it.
    """

    def __init__(
        self,
        template: Samples,
        *,
        window: float,
        gate: float = 0.6,
        grace: float = 0.5,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        if not 0 < gate < 1:
            raise ValueError("gate must be between 0 and 1")
        self._template = template.astype(np.float64)
        self._norm = float(np.linalg.norm(self._template))
        self._window_ns = int(window * 1e9)
        self._grace_ns = int(grace * 1e9)
        self.gate = gate
        self._rate = sample_rate
        # Enough history for one window plus the tail of a signal that starts at its very end.
        self._keep = int((window + grace) * sample_rate) + 2 * len(template)
        self._buffer: deque[Samples] = deque()
        self._chunks: deque[_Chunk] = deque()
        self._buffered = 0
        self._next_sample = 0
        self._last_arrival_ns: int | None = None
        self._pending: deque[tuple[int, int]] = deque()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def expect(self, signal_id: int, sent_ns: int) -> None:
        self._pending.append((signal_id, sent_ns))

    def push(self, samples: Samples, arrived_ns: int) -> None:
        if len(samples) == 0:
            return
        self._buffer.append(samples)
        self._chunks.append(_Chunk(self._next_sample, arrived_ns, len(samples)))
        self._next_sample += len(samples)
        self._buffered += len(samples)
        self._last_arrival_ns = arrived_ns
        while self._buffered - len(self._buffer[0]) >= self._keep:
            self._buffered -= len(self._buffer.popleft())
            self._chunks.popleft()

    def poll(self, now_ns: int) -> list[Detection]:
        """Resolve every expected signal whose window is complete."""
        done: list[Detection] = []
        while self._pending:
            signal_id, sent_ns = self._pending[0]
            end_ns = sent_ns + self._window_ns
            complete = self._last_arrival_ns is not None and self._last_arrival_ns > end_ns
            if not complete and now_ns < end_ns + self._grace_ns:
                break
            self._pending.popleft()
            done.append(self._search(signal_id, sent_ns, end_ns))
        return done

    def _search(self, signal_id: int, sent_ns: int, end_ns: int) -> Detection:
        chunks = [c for c in self._chunks if sent_ns <= c.arrived_ns <= end_ns]
        if not chunks:
            return Detection(signal_id, sent_ns, EchoOutcome.NO_MEDIA, None, 0.0)
        first = chunks[0].first_sample
        # The onset must arrive inside the window; the rest of the signal may come after it.
        last = chunks[-1].first_sample + chunks[-1].length + len(self._template)
        region = self._samples(first, last)
        m = len(self._template)
        if len(region) < m:
            return Detection(signal_id, sent_ns, EchoOutcome.NO_ECHO, None, 0.0)
        ncc = self._normalised_correlation(region)
        onset_limit = chunks[-1].first_sample + chunks[-1].length - first
        ncc = ncc[:onset_limit]
        peak = int(np.argmax(ncc))
        score = float(ncc[peak])
        if score < self.gate:
            outcome = EchoOutcome.WEAK_MATCH if score >= self.gate / 2 else EchoOutcome.NO_ECHO
            return Detection(signal_id, sent_ns, outcome, None, max(score, 0.0))
        arrived = self._arrival_of(first + peak)
        return Detection(signal_id, sent_ns, EchoOutcome.OK, arrived, score)

    def _samples(self, first: int, last: int) -> npt.NDArray[np.float64]:
        start = self._chunks[0].first_sample
        joined = np.concatenate(list(self._buffer)).astype(np.float64)
        return joined[max(0, first - start) : max(0, last - start)]

    def _normalised_correlation(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        m = len(self._template)
        size = 1 << (len(x) + m - 1).bit_length()
        spectrum = np.fft.rfft(x, size) * np.conj(np.fft.rfft(self._template, size))
        corr = np.fft.irfft(spectrum, size)[: len(x) - m + 1]
        energy = np.concatenate(([0.0], np.cumsum(x * x)))
        window_energy = np.maximum(energy[m:] - energy[:-m], 0.0)
        rms = np.sqrt(window_energy / m)
        denom = self._norm * np.sqrt(window_energy)
        out = np.zeros_like(corr)
        loud = rms > _ENERGY_FLOOR
        out[loud] = corr[loud] / denom[loud]
        return out

    def _arrival_of(self, sample: int) -> int:
        for chunk in reversed(self._chunks):
            if chunk.first_sample <= sample:
                offset = sample - chunk.first_sample
                return chunk.arrived_ns + offset * 1_000_000_000 // self._rate
        return self._chunks[0].arrived_ns
