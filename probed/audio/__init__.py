"""Audio for the speech probes: fixture clips, encoding, chunking and real-time pacing."""

from probed.audio.chunks import UtteranceAudio, prepare
from probed.audio.clip import Clip, load_clip
from probed.audio.encoding import Encoding, encode, mulaw_decode, mulaw_encode, pcm16le
from probed.audio.errors import AudioError
from probed.audio.manifest import Manifest, bundled_fixtures_dir, load_manifest
from probed.audio.pacer import Pacer
from probed.audio.vad import speech_bounds

__all__ = [
    "AudioError",
    "Clip",
    "Encoding",
    "Manifest",
    "Pacer",
    "UtteranceAudio",
    "bundled_fixtures_dir",
    "encode",
    "load_clip",
    "load_manifest",
    "mulaw_decode",
    "mulaw_encode",
    "pcm16le",
    "prepare",
    "speech_bounds",
]
