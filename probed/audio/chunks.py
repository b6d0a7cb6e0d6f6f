"""A clip cut into the wire chunks of one utterance, encoded once, before measuring starts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from probed.audio.clip import Clip
from probed.audio.encoding import Encoding, encode


@dataclass(frozen=True, eq=False)
class UtteranceAudio:
    """Chunk i covers stream time [i * chunk_seconds, (i + 1) * chunk_seconds).

    The clip comes first (its last chunk padded with silence), then `trailing` seconds of
    silence. `start_chunk` and `end_chunk` are the chunks that hold the first and the last
    instant of speech: the latencies are measured from the moments those chunks were sent.
    """

    clip: Clip
    chunk_seconds: float
    chunks: tuple[bytes, ...]
    clip_chunks: int
    start_chunk: int
    end_chunk: int
    encoding: Encoding

    @property
    def speech_chunks(self) -> tuple[bytes, ...]:
        """The chunks up to and including the one holding the end of speech."""
        return self.chunks[: self.end_chunk + 1]


def prepare(
    clip: Clip,
    *,
    chunk_ms: int = 20,
    encoding: Encoding = "pcm16",
    trailing: float = 2.0,
) -> UtteranceAudio:
    if not 1 <= chunk_ms <= 1000:
        raise ValueError("chunk_ms must be between 1 and 1000")
    if trailing < 0 or not math.isfinite(trailing):
        raise ValueError("trailing silence must be a finite number of seconds >= 0")
    size = clip.rate * chunk_ms // 1000
    if size * 1000 != clip.rate * chunk_ms:
        raise ValueError(f"{chunk_ms} ms is not a whole number of samples at {clip.rate} Hz")
    chunk_seconds = chunk_ms / 1000
    clip_chunks = math.ceil(len(clip.samples) / size)
    # Real silence, as a muted microphone produces it: the provider's endpointer must hear the
    # speech end, which it cannot if the client simply stops sending.
    silence_chunks = math.ceil(trailing / chunk_seconds - 1e-9)
    total = clip_chunks + silence_chunks
    padded = np.zeros(total * size, dtype=np.int16)
    padded[: len(clip.samples)] = clip.samples
    chunks = tuple(encode(padded[i * size : (i + 1) * size], encoding) for i in range(total))
    last = clip_chunks - 1
    return UtteranceAudio(
        clip=clip,
        chunk_seconds=chunk_seconds,
        chunks=chunks,
        clip_chunks=clip_chunks,
        start_chunk=min(int(clip.speech_start / chunk_seconds + 1e-9), last),
        end_chunk=min(int(clip.speech_end / chunk_seconds + 1e-9), last),
        encoding=encoding,
    )
