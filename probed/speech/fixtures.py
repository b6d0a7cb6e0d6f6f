"""Build-time preparation of a speech probe's utterances: load, resample, encode, chunk.

Everything that costs CPU happens here, once, when the probe is built (or checked): the
measuring loop only hands prepared chunks to the socket. Errors are AudioError, whose message
names the file and the problem, for `probed check`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

from probed.adapters.base import SpeechAdapter
from probed.audio.chunks import UtteranceAudio, prepare
from probed.audio.errors import AudioError
from probed.audio.manifest import Manifest, ManifestEntry, load_manifest

# Prepared utterances are immutable, so probes playing the same clip the same way share one copy
# (200 probes of one kind would otherwise each hold, and each decode, every fixture). Held weakly:
# a clip no probe plays any more is dropped. The file's size and mtime are in the key, so an
# edited fixture (or manifest entry) is read afresh on the next reload.
_Key = tuple[str, ManifestEntry, int, int, int, int, str, float]
_shared: weakref.WeakValueDictionary[_Key, UtteranceAudio] = weakref.WeakValueDictionary()
# Probes load in worker threads: one decodes a clip while the others wait for its copy.
_loading = threading.Lock()


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
        with _loading:
            return [_utterance(manifest, clip_id, adapter, trailing) for clip_id in ids]
    except ValueError as exc:  # a chunk size that does not fit the adapter's sample rate
        raise AudioError(f"{adapter.name}: {exc}") from None


def _utterance(
    manifest: Manifest, clip_id: str, adapter: SpeechAdapter, trailing: float
) -> UtteranceAudio:
    entry = manifest.entry(clip_id)
    path = manifest.directory / entry.file
    try:
        stat = path.stat()
        version = (stat.st_size, stat.st_mtime_ns)
    except OSError:
        version = (-1, -1)  # manifest.load names the missing file
    key: _Key = (
        str(path.resolve()), entry, *version, adapter.sample_rate, adapter.chunk_ms,
        adapter.encoding, trailing,
    )  # fmt: skip
    audio = _shared.get(key)
    if audio is None:
        audio = prepare(
            manifest.load(clip_id, rate=adapter.sample_rate),
            chunk_ms=adapter.chunk_ms,
            encoding=adapter.encoding,
            trailing=trailing,
        )
        _shared[key] = audio
    return audio
