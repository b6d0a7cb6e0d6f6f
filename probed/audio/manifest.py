"""The fixture manifest: which clips exist, what is said in them and where the speech is.

The bundled fixtures ship inside the package (the wheel force-includes the top-level
audio_fixtures/ as probed/audio_fixtures/), so a deployed daemon finds them without a checkout.
A user directory with the same manifest format works too; its entries may leave out the speech
boundaries, which are then detected when the clip is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from probed.audio.clip import Clip, load_clip
from probed.audio.errors import AudioError

MANIFEST_NAME = "manifest.json"
_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def bundled_fixtures_dir() -> Path:
    """Where the bundled clips are: inside an installed wheel, or the source checkout's."""
    installed = _PACKAGE_DIR / "audio_fixtures"
    if (installed / MANIFEST_NAME).is_file():
        return installed
    return _PACKAGE_DIR.parent / "audio_fixtures"


@dataclass(frozen=True)
class ManifestEntry:
    id: str
    file: str
    transcript: str
    speech_start: float | None
    speech_end: float | None
    voice: str | None = None
    made: str | None = None


@dataclass(frozen=True)
class Manifest:
    directory: Path
    sample_rate: int | None
    entries: tuple[ManifestEntry, ...]

    def entry(self, clip_id: str) -> ManifestEntry:
        for entry in self.entries:
            if entry.id == clip_id:
                return entry
        known = ", ".join(e.id for e in self.entries)
        raise AudioError(f"{self.directory / MANIFEST_NAME}: no clip {clip_id!r} (has: {known})")

    def load(self, clip_id: str, rate: int = 16000) -> Clip:
        entry = self.entry(clip_id)
        speech = None
        if entry.speech_start is not None and entry.speech_end is not None:
            speech = (entry.speech_start, entry.speech_end)
        return load_clip(
            self.directory / entry.file,
            entry.transcript,
            rate=rate,
            clip_id=entry.id,
            speech=speech,
            expect_rate=self.sample_rate,
        )

    def load_all(self, ids: Iterable[str] | None = None, rate: int = 16000) -> list[Clip]:
        wanted = [e.id for e in self.entries] if ids is None else list(ids)
        return [self.load(clip_id, rate) for clip_id in wanted]


def _field(
    raw: dict[str, object], key: str, kind: type | tuple[type, ...], where: str, optional: bool
) -> object:
    value = raw.get(key)
    if value is None and optional:
        return None
    # bool is an int: true as an offset is a typo, not 1 second.
    if isinstance(value, bool) or not isinstance(value, kind):
        name = "number" if isinstance(kind, tuple) else kind.__name__
        raise AudioError(f"{where}: {key!r} must be a {name}")
    return value


def _seconds(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _entry(raw: object, where: str) -> ManifestEntry:
    if not isinstance(raw, dict):
        raise AudioError(f"{where}: each clip must be a JSON object")
    clip_id = _field(raw, "id", str, where, optional=False)
    file = _field(raw, "file", str, where, optional=False)
    transcript = _field(raw, "transcript", str, where, optional=False)
    start = _seconds(_field(raw, "speech_start", (int, float), where, optional=True))
    end = _seconds(_field(raw, "speech_end", (int, float), where, optional=True))
    voice = _field(raw, "voice", str, where, optional=True)
    made = _field(raw, "made", str, where, optional=True)
    assert isinstance(clip_id, str) and isinstance(file, str) and isinstance(transcript, str)
    if Path(file).is_absolute() or ".." in Path(file).parts:
        raise AudioError(f"{where}: 'file' must be a path inside the manifest's directory")
    if (start is None) != (end is None):
        raise AudioError(f"{where}: give both speech_start and speech_end, or neither")
    return ManifestEntry(
        id=clip_id,
        file=file,
        transcript=transcript,
        speech_start=start,
        speech_end=end,
        voice=voice if isinstance(voice, str) else None,
        made=made if isinstance(made, str) else None,
    )


def load_manifest(directory: Path | None = None) -> Manifest:
    """Read and check a manifest (the bundled one by default); clips are not decoded yet."""
    directory = bundled_fixtures_dir() if directory is None else directory
    path = directory / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AudioError(f"{path}: manifest not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AudioError(f"{path}: not a readable JSON manifest ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("clips"), list):
        raise AudioError(f"{path}: expected an object with a 'clips' list")
    rate = _field(raw, "sample_rate", int, str(path), optional=True)
    entries = tuple(_entry(c, f"{path}: clips[{i}]") for i, c in enumerate(raw["clips"]))
    ids = [e.id for e in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise AudioError(f"{path}: duplicate clip ids {duplicates}")
    return Manifest(
        directory=directory, sample_rate=rate if isinstance(rate, int) else None, entries=entries
    )
