"""The known signal and its detector, through a real Opus encoder and decoder, no network."""

from __future__ import annotations

import fractions

import numpy as np
import numpy.typing as npt
import pytest

pytest.importorskip("aiortc")

import av
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame

from probed.webrtc.media import to_mono
from probed.webrtc.signal import SAMPLE_RATE, Detection, EchoDetector, EchoOutcome, chirp

FRAME = 960
NS = 1_000_000_000


def _through_opus(pcm: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
    """20 ms chunks of ``pcm`` after an Opus encode and decode, one list item per packet."""
    enc, dec = OpusEncoder(), OpusDecoder()
    out: list[npt.NDArray[np.float32]] = []
    for i in range(0, len(pcm), FRAME):
        frame = av.AudioFrame.from_ndarray(
            (pcm[i : i + FRAME] * 32767).astype(np.int16).reshape(1, -1),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = i
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        payloads, ts = enc.encode(frame)
        for payload in payloads:
            for decoded in dec.decode(JitterFrame(payload, ts)):
                assert isinstance(decoded, av.AudioFrame)
                out.append(to_mono(decoded))
    return out


def _run(
    pcm: npt.NDArray[np.float32], *, sent_ns: int, arrival_offset_ns: int, gate: float = 0.6
) -> list[Detection]:
    det = EchoDetector(chirp(), window=0.8, gate=gate)
    det.expect(1, sent_ns)
    results: list[Detection] = []
    for n, chunk in enumerate(_through_opus(pcm)):
        arrived = n * FRAME * NS // SAMPLE_RATE + arrival_offset_ns
        det.push(chunk, arrived)
        results += det.poll(arrived)
    results += det.poll(10**12)
    return results


def _noise(seconds: float, level: float = 0.02, seed: int = 1) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * level).astype(np.float32)


def test_chirp_found_after_opus_with_its_onset_time() -> None:
    pcm = _noise(3.0)
    sig = chirp()
    pcm[SAMPLE_RATE : SAMPLE_RATE + len(sig)] = sig
    # "Sent" at 1.0 s; every packet "arrives" 50 ms after its media time.
    [result] = _run(pcm, sent_ns=NS, arrival_offset_ns=50_000_000)
    assert result.outcome is EchoOutcome.OK
    assert result.correlation > 0.9
    # 50 ms of transport plus Opus's algorithmic delay (6.5 ms at 48 kHz), to a millisecond.
    assert result.roundtrip == pytest.approx(0.0565, abs=0.001)


def test_no_signal_in_noise_is_no_echo_not_a_latency() -> None:
    [result] = _run(_noise(3.0, level=0.3), sent_ns=NS, arrival_offset_ns=0)
    assert result.outcome is EchoOutcome.NO_ECHO
    assert result.roundtrip is None
    assert result.correlation < 0.3


def test_signal_buried_in_loud_noise_fails_the_gate() -> None:
    pcm = _noise(3.0, level=0.5)
    pcm[SAMPLE_RATE : SAMPLE_RATE + 4800] += chirp(amplitude=0.3)
    [result] = _run(pcm, sent_ns=NS, arrival_offset_ns=0, gate=0.9)
    assert result.outcome in (EchoOutcome.WEAK_MATCH, EchoOutcome.NO_ECHO)
    assert result.roundtrip is None
    assert 0.1 < result.correlation < 0.9


def test_silence_is_no_echo() -> None:
    [result] = _run(np.zeros(3 * SAMPLE_RATE, dtype=np.float32), sent_ns=NS, arrival_offset_ns=0)
    assert result.outcome is EchoOutcome.NO_ECHO


def test_no_audio_at_all_resolves_on_the_clock_as_no_media() -> None:
    det = EchoDetector(chirp(), window=0.5, grace=0.2)
    det.expect(7, NS)
    assert det.poll(NS + int(0.6 * NS)) == []  # still inside window + grace
    [result] = det.poll(NS + int(0.8 * NS))
    assert (result.signal_id, result.outcome) == (7, EchoOutcome.NO_MEDIA)


def test_gate_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="gate"):
        EchoDetector(chirp(), window=0.5, gate=1.5)
