"""Build-time preparation of a speech probe's utterances: load, resample, encode, chunk.

Everything that costs CPU happens here, once, when the probe is built (or checked): the
measuring loop only hands prepared chunks to the socket. Errors are AudioError, whose message
names the file and the problem, for `probed check`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from probed.adapters.base import SpeechAdapter
from probed.audio.chunks import UtteranceAudio, prepare
from probed.audio.errors import AudioError
from probed.audio.manifest import load_manifest


def load_utterances(
    adapter: SpeechAdapter,
    clip_ids: Sequence[str] | None = None,
    *,
    directory: Path | None = None,
    trailing: float = 2.0,
) -> list[UtteranceAudio]:
    """The clips (all of the manifest's when `clip_ids` is None) as the adapter sends them.

    `directory` is a fixture directory with its own manifest.json; the bundled fixtures by
    default. `trailing` seconds of silence follow the speech (used in vad mode).
    """
    manifest = load_manifest(directory)
    ids = [e.id for e in manifest.entries] if clip_ids is None else list(clip_ids)
    if not ids:
        raise AudioError(f"{manifest.directory}: no clips to play")
    try:
        return [
            prepare(
                manifest.load(clip_id, rate=adapter.sample_rate),
                chunk_ms=adapter.chunk_ms,
                encoding=adapter.encoding,
                trailing=trailing,
            )
            for clip_id in ids
        ]
    except ValueError as exc:  # a chunk size that does not fit the adapter's sample rate
        raise AudioError(f"{adapter.name}: {exc}") from None
