"""The outgoing track: paced frames, signals on schedule, PCM sources at any rate."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("aiortc")

from probed.webrtc.media import FRAME_SAMPLES, LoopedPcm, ProbeAudioTrack, to_mono
from probed.webrtc.signal import SAMPLE_RATE, chirp


def test_fixture_at_16k_is_played_at_48k() -> None:
    t = np.arange(16_000) / 16_000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    source = LoopedPcm(tone, sample_rate=16_000)
    out = source.read(SAMPLE_RATE)
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(int(np.argmax(spectrum)) - 440) <= 1  # 1 Hz bins over one second
    assert len(source.read(10)) == 10


def test_looped_pcm_wraps() -> None:
    source = LoopedPcm(np.array([0.1, 0.2, 0.3], dtype=np.float32))
    assert source.read(7).tolist() == pytest.approx([0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1])


async def test_track_paces_frames_and_sends_signals_on_schedule() -> None:
    sent: list[tuple[int, int]] = []
    late: list[float] = []
    sig = chirp()
    track = ProbeAudioTrack(
        LoopedPcm(np.zeros(960, dtype=np.float32)),
        sig,
        interval=0.2,
        first_signal_after=0.04,
        on_signal=lambda i, ns: sent.append((i, ns)),
        on_lateness=late.append,
    )
    start = time.perf_counter()
    frames = [await track.recv() for _ in range(25)]  # 0.5 s of audio
    elapsed = time.perf_counter() - start
    assert elapsed >= 0.47  # paced: 24 frame periods after the first, never faster
    assert [i for i, _ in sent] == [1, 2, 3]
    assert len(late) == 25
    assert [f.pts for f in frames[:3]] == [0, FRAME_SAMPLES, 2 * FRAME_SAMPLES]
    # The signal starts on the frame boundary of frame 2 (0.04 s) and is there intact.
    audio = np.concatenate([to_mono(f) for f in frames])
    start_sample = 2 * FRAME_SAMPLES
    np.testing.assert_allclose(audio[start_sample : start_sample + len(sig)], sig, atol=1e-4)
    track.stop()


def test_interval_shorter_than_the_signal_is_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        ProbeAudioTrack(
            LoopedPcm(np.zeros(10, dtype=np.float32)),
            chirp(duration=0.1),
            interval=0.05,
            on_signal=lambda _i, _ns: None,
        )
