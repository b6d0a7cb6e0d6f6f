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
        self._factor = max(1, sample_rate // 16_000)
        self._coarse = _decimate(self._template, self._factor)
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
        onset_limit = chunks[-1].first_sample + chunks[-1].length - first
        peak, score = self._locate(region, onset_limit)
        if score < self.gate:
            outcome = EchoOutcome.WEAK_MATCH if score >= self.gate / 2 else EchoOutcome.NO_ECHO
            return Detection(signal_id, sent_ns, outcome, None, max(score, 0.0))
        arrived = self._arrival_of(first + peak)
        return Detection(signal_id, sent_ns, EchoOutcome.OK, arrived, score)

    def _samples(self, first: int, last: int) -> npt.NDArray[np.float64]:
        start = self._chunks[0].first_sample
        joined = np.concatenate(list(self._buffer)).astype(np.float64)
        return joined[max(0, first - start) : max(0, last - start)]

    def _locate(self, region: npt.NDArray[np.float64], onset_limit: int) -> tuple[int, float]:
        """Best onset in ``region[:onset_limit]`` and its normalised correlation.

        Coarse then fine: the FFT search runs on a copy decimated to ~16 kHz (the chirp stays
        below 4 kHz), a third of the work that blocks the loop at 48 kHz; the peak is then
        refined sample by sample at the full rate around the coarse one.
        """
        f = self._factor
        m = len(self._template)
        limit = min(onset_limit, len(region) - m + 1)
        if f == 1:
            ncc = _normalised_correlation(region, self._template)[:limit]
            peak = int(np.argmax(ncc))
            return peak, max(float(ncc[peak]), 0.0)
        coarse = _normalised_correlation(_decimate(region, f), self._coarse)
        guess = int(np.argmax(coarse[: max(1, limit // f)])) * f
        best, score = guess, 0.0
        for lag in range(max(0, guess - 2 * f), min(limit, guess + 2 * f + 1)):
            window = region[lag : lag + m]
            energy = float(window @ window)
            if np.sqrt(energy / m) <= _ENERGY_FLOOR:
                continue
            value = float(window @ self._template) / (self._norm * np.sqrt(energy))
            if value > score:
                best, score = lag, value
        return best, score

    def _arrival_of(self, sample: int) -> int:
        for chunk in reversed(self._chunks):
            if chunk.first_sample <= sample:
                offset = sample - chunk.first_sample
                return chunk.arrived_ns + offset * 1_000_000_000 // self._rate
        return self._chunks[0].arrived_ns


def _decimate(x: npt.NDArray[np.float64], factor: int) -> npt.NDArray[np.float64]:
    # A box average before keeping every factor-th sample: crude, but the chirp's band sits
    # far below the new Nyquist and only the coarse peak position comes from this copy.
    n = len(x) // factor * factor
    out: npt.NDArray[np.float64] = x[:n].reshape(-1, factor).mean(axis=1)
    return out


def _normalised_correlation(
    x: npt.NDArray[np.float64], template: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Correlation of ``template`` at every lag of ``x``, normalised to [-1, 1]."""
    m = len(template)
    if len(x) < m:
        return np.zeros(1)
    norm = float(np.linalg.norm(template))
    size = 1 << (len(x) + m - 1).bit_length()
    spectrum = np.fft.rfft(x, size) * np.conj(np.fft.rfft(template, size))
    corr = np.fft.irfft(spectrum, size)[: len(x) - m + 1]
    energy = np.concatenate(([0.0], np.cumsum(x * x)))
    window_energy = np.maximum(energy[m:] - energy[:-m], 0.0)
    rms = np.sqrt(window_energy / m)
    out = np.zeros_like(corr)
    loud = rms > _ENERGY_FLOOR
    out[loud] = corr[loud] / (norm * np.sqrt(window_energy[loud]))
    return out
