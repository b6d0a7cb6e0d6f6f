"""Audio loading, encoding, chunking and pacing, on the real bundled clips and real files."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from probed.audio import (
    AudioError,
    Pacer,
    load_clip,
    load_manifest,
    mulaw_decode,
    mulaw_encode,
    pcm16le,
    prepare,
    speech_bounds,
)
from tests.conftest import bound

RATE = 16000


def tone(seconds: float, rate: int = RATE, level: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(round(seconds * rate), dtype=np.float32)


def test_pcm16_is_little_endian() -> None:
    assert pcm16le(np.array([1, -2, 0x1234], dtype=np.int16)) == b"\x01\x00\xfe\xff\x34\x12"


def test_mulaw_known_codes_and_round_trip() -> None:
    codes = mulaw_encode(np.array([0, 32767, -32768], dtype=np.int16))
    assert codes == b"\xff\x80\x00"
    samples = (np.linspace(-1, 1, 4001) * 32000).astype(np.int16)
    back = mulaw_decode(mulaw_encode(samples)).astype(np.int32)
    # mu-law keeps roughly 13 bits of a loud sample and far more of a quiet one.
    error = np.abs(back - samples.astype(np.int32))
    assert np.all(error <= np.maximum(8, np.abs(samples.astype(np.int32)) // 16))


def test_speech_bounds_find_a_tone_between_silences() -> None:
    audio = np.concatenate([silence(0.5), tone(1.2), silence(0.8)])
    start, end = speech_bounds(audio, RATE) or (0, 0)
    assert start == pytest.approx(0.5, abs=0.011)
    assert end == pytest.approx(1.7, abs=0.011)
    assert speech_bounds(silence(1.0), RATE) is None


def test_user_clip_is_resampled_and_its_speech_detected(tmp_path: Path) -> None:
    path = tmp_path / "mine.wav"
    soundfile.write(path, np.concatenate([silence(0.4, 44100), tone(1.0, 44100)]), 44100)
    clip = load_clip(path, "a user clip")
    assert clip.rate == RATE
    assert clip.duration == pytest.approx(1.4, abs=0.001)
    assert clip.speech_start == pytest.approx(0.4, abs=0.011)
    assert clip.speech_end == pytest.approx(1.4, abs=0.011)
    assert clip.id == "mine"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "file not found"),
        (b"RIFF\x00\x00 definitely not audio", "not a readable audio file"),
    ],
)
def test_missing_or_corrupt_file_is_a_clear_error(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "clip.flac"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError, match=message) as info:
        load_clip(path, "words")
    assert str(path) in str(info.value)


def test_wrong_rate_silence_and_empty_transcript_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    soundfile.write(path, tone(0.5, 8000), 8000)
    with pytest.raises(AudioError, match="8000 Hz but the manifest says 16000 Hz"):
        load_clip(path, "words", expect_rate=16000)
    with pytest.raises(AudioError, match="transcript is empty"):
        load_clip(path, "  ")
    quiet = tmp_path / "quiet.wav"
    soundfile.write(quiet, silence(1.0), RATE)
    with pytest.raises(AudioError, match="no speech"):
        load_clip(quiet, "words")


def test_bundled_manifest_covers_the_required_kinds_of_speech() -> None:
    manifest = load_manifest()
    clips = manifest.load_all()
    assert len(clips) >= 10
    assert {e.voice for e in manifest.entries} == {"slt", "rms", "awb"}
    assert any(c.speech_end - c.speech_start > 10 for c in clips)
    transcripts = " | ".join(c.transcript for c in clips)
    for needed in ("create a function", "run the tests", "what is", "five"):
        assert needed in transcripts
    assert any(e.made and "silence" in e.made for e in manifest.entries)
    for clip in clips:
        assert clip.rate == RATE
        # The manifest's boundaries are what the loader would detect itself.
        detected = speech_bounds((clip.samples / 32768).astype(np.float32), clip.rate)
        assert detected == pytest.approx((clip.speech_start, clip.speech_end), abs=0.011)


def test_manifest_errors_name_the_entry(tmp_path: Path) -> None:
    def write(clips: object) -> None:
        (tmp_path / "manifest.json").write_text(json.dumps({"sample_rate": RATE, "clips": clips}))

    write([{"id": "a", "file": "a.flac", "transcript": "hi", "speech_start": True}])
    with pytest.raises(AudioError, match=r"clips\[0\]: 'speech_start' must be a number"):
        load_manifest(tmp_path)
    write([{"id": "a", "file": "../a.flac", "transcript": "hi"}])
    with pytest.raises(AudioError, match="inside the manifest's directory"):
        load_manifest(tmp_path)
    write([{"id": "a", "file": "a.flac", "transcript": "hi"}])
    with pytest.raises(AudioError, match=r"a\.flac: file not found"):
        load_manifest(tmp_path).load("a")
    with pytest.raises(AudioError, match="no clip 'b'"):
        load_manifest(tmp_path).load("b")
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(AudioError, match="not a readable JSON manifest"):
        load_manifest(tmp_path)


def test_user_manifest_without_boundaries_detects_them(tmp_path: Path) -> None:
    soundfile.write(tmp_path / "a.wav", np.concatenate([silence(0.3), tone(0.6)]), RATE)
    (tmp_path / "manifest.json").write_text(
        json.dumps({"clips": [{"id": "a", "file": "a.wav", "transcript": "hello"}]})
    )
    clip = load_manifest(tmp_path).load("a")
    assert clip.speech_start == pytest.approx(0.3, abs=0.011)


def test_prepare_chunks_marks_speech_and_adds_silence() -> None:
    clip = load_manifest().load("run_tests")
    audio = prepare(clip, chunk_ms=20, trailing=1.0)
    assert audio.clip_chunks == -(-len(clip.samples) // 320)
    assert len(audio.chunks) == audio.clip_chunks + 50
    assert all(len(c) == 640 for c in audio.chunks)
    assert audio.start_chunk == int(clip.speech_start / 0.02)
    assert audio.end_chunk == int(clip.speech_end / 0.02)
    assert set(b"".join(audio.chunks[audio.clip_chunks :])) == {0}
    assert len(prepare(clip, chunk_ms=50, encoding="mulaw").chunks[0]) == 800
    odd_rate = load_clip(Path(clip.source), clip.transcript, rate=11025)
    with pytest.raises(ValueError, match="whole number of samples"):
        prepare(odd_rate, chunk_ms=3)


async def test_pacer_keeps_absolute_deadlines() -> None:
    lateness: list[float] = []
    pacer = Pacer(0.005, on_lateness=lateness.append)

    async def send(_i: int) -> None:
        return None

    sent = await pacer.run(60, send)
    assert len(sent) == len(lateness) == 60
    assert pacer.t0_ns is not None
    # No drift: the last chunk left close to t0 + 59 intervals, not 60 oversleeps later.
    assert sent[-1] - pacer.t0_ns >= 59 * 5_000_000
    assert (sent[-1] - pacer.t0_ns) / 1e9 < 0.295 + bound(0.2)


async def test_pacer_catches_up_instead_of_skipping() -> None:
    lateness: list[float] = []
    sent_indices: list[int] = []
    pacer = Pacer(0.01, on_lateness=lateness.append)

    async def send(i: int) -> None:
        sent_indices.append(i)
        if i == 2:
            # A send that blocks (a full socket buffer) for three intervals and more.
            time.sleep(0.045)  # noqa: ASYNC251 - deliberately blocks the loop, like a stall
        await asyncio.sleep(0)

    await pacer.run(20, send)
    assert sent_indices == list(range(20))
    # The chunks due during the stall left late, at once, one after another...
    assert lateness[3] > 0.02
    assert lateness[4] > 0.01
    # ...and the schedule is the original one: the tail is on time again.
    assert lateness[-1] < lateness[3]


async def test_pacer_stop_ends_early() -> None:
    pacer = Pacer(0.001)
    count = 0

    async def send(_i: int) -> None:
        nonlocal count
        count += 1

    sent = await pacer.run(100, send, stop=lambda: count >= 5)
    assert len(sent) == count == 5


async def test_pacer_lateness_counts_the_send_itself() -> None:
    """A chunk has left when the send returned: a slow hand-over is lateness, not hidden."""
    lateness: list[float] = []
    pacer = Pacer(0.05, on_lateness=lateness.append)

    async def send(i: int) -> None:
        if i == 1:
            time.sleep(0.02)  # noqa: ASYNC251 - a slow hand-over to the socket, on purpose

    sent = await pacer.run(2, send)
    assert pacer.t0_ns is not None
    assert lateness[1] >= 0.02
    # The reported lateness is the returned send instant against the absolute deadline.
    assert lateness[1] == pytest.approx((sent[1] - pacer.deadline(1)) / 1e9)
