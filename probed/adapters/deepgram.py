"""Deepgram live transcription, v1 (`/v1/listen`).

Configuration travels in the query string; audio is raw binary frames; control messages are JSON
text. A turn's text is the concatenation of every `is_final` piece since the last turn end; the
turn ends with `speech_final` (endpointing), `from_finalize` (our Finalize) or `UtteranceEnd`
(word-gap fallback). See shared/reference/voice-protocols.md section 3.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from probed.adapters.base import (
    AdapterError,
    ConnectRequest,
    JsonObject,
    SpeechAdapter,
    Wire,
    code_text,
    decode_object,
    opt_bool,
    opt_list,
    opt_number,
    opt_object,
    opt_str,
    type_name,
    with_query,
)
from probed.adapters.events import (
    MAX_SHORT,
    Closing,
    Event,
    Final,
    Partial,
    ProviderError,
    SpeechStarted,
    SpeechStopped,
    Unknown,
    clip_text,
)
from probed.audio.encoding import Encoding

_WIRE_ENCODING = {"pcm16": "linear16", "mulaw": "mulaw"}


@dataclass(frozen=True)
class DeepgramOptions:
    url: str = "wss://api.deepgram.com/v1/listen"
    api_key: str | None = None
    model: str = "nova-3"
    language: str = "en"
    sample_rate: int = 16000
    encoding: Encoding = "pcm16"
    chunk_ms: int = 20
    endpointing_ms: int | None = 300
    utterance_end_ms: int | None = 1000
    interim_results: bool = True
    vad_events: bool = True
    punctuate: bool = True
    smart_format: bool = False
    extra_query: dict[str, str] = field(default_factory=dict)


class DeepgramAdapter(SpeechAdapter):
    name = "deepgram"
    ready_on_open = True
    # Deepgram closes with 1011 NET-0001 after 10 s without audio or a text message.
    keepalive_interval = 4.0

    def __init__(self, options: DeepgramOptions | None = None) -> None:
        self.options = options or DeepgramOptions()
        self.sample_rate = self.options.sample_rate
        self.chunk_ms = self.options.chunk_ms
        self.encoding = self.options.encoding
        self._pieces: list[str] = []

    def connect_request(self) -> ConnectRequest:
        o = self.options
        query: dict[str, str | int | float | bool | None] = {
            "model": o.model,
            "language": o.language,
            "encoding": _WIRE_ENCODING[o.encoding],
            "sample_rate": o.sample_rate,
            "channels": 1,
            "interim_results": o.interim_results,
            "endpointing": o.endpointing_ms if o.endpointing_ms is not None else False,
            "utterance_end_ms": o.utterance_end_ms,
            "vad_events": o.vad_events,
            "punctuate": o.punctuate,
            "smart_format": o.smart_format,
            **o.extra_query,
        }
        headers = {"Authorization": f"Token {o.api_key}"} if o.api_key else {}
        return ConnectRequest(with_query(o.url, query), headers)

    def audio_message(self, chunk: bytes) -> Wire:
        # An empty binary frame is Deepgram's legacy "close stream": never send one.
        if not chunk:
            raise ValueError("an empty audio chunk would close a Deepgram stream")
        return chunk

    def flush_message(self) -> Wire:
        return json.dumps({"type": "Finalize"})

    def keepalive_message(self) -> Wire:
        return json.dumps({"type": "KeepAlive"})

    def close_messages(self) -> list[Wire]:
        return [json.dumps({"type": "CloseStream"})]

    def new_turn(self) -> None:
        self._pieces.clear()

    def parse(self, data: Wire) -> list[Event]:
        obj = decode_object(data)
        kind = obj.get("type")
        if kind == "Results":
            return self._results(obj)
        if kind == "UtteranceEnd":
            events: list[Event] = [SpeechStopped(opt_number(obj, "last_word_end"))]
            if self._pieces:
                events.append(Final(self._take(), "utterance_end"))
            return events
        if kind == "SpeechStarted":
            return [SpeechStarted(opt_number(obj, "timestamp"))]
        if kind == "Metadata":
            return [Closing("metadata")]
        if kind == "Error":
            message = opt_str(obj, "description") or opt_str(obj, "message") or ""
            code = obj.get("err_code", obj.get("code"))
            return [ProviderError(code_text(code), clip_text(message, MAX_SHORT), fatal=True)]
        return [Unknown(type_name(obj))]

    def _take(self) -> str:
        text = " ".join(self._pieces)
        self._pieces.clear()
        return text

    def _results(self, obj: JsonObject) -> list[Event]:
        transcript = _transcript(obj)
        is_final = opt_bool(obj, "is_final")
        speech_final = opt_bool(obj, "speech_final")
        from_finalize = opt_bool(obj, "from_finalize")
        if not is_final:
            if not transcript:
                return []
            return [Partial(" ".join([*self._pieces, transcript]))]
        if transcript:
            self._pieces.append(transcript)
        if speech_final or from_finalize:
            if not self._pieces:
                # An empty endpoint or a Finalize with nothing buffered: no turn to end.
                return []
            return [Final(self._take(), "speech_final" if speech_final else "from_finalize")]
        return [Partial(" ".join(self._pieces))] if transcript else []


def _transcript(obj: JsonObject) -> str:
    channel = opt_object(obj, "channel")
    if channel is None:
        return ""
    alternatives = opt_list(channel, "alternatives")
    if not alternatives:
        return ""
    best = alternatives[0]
    if not isinstance(best, dict):
        raise AdapterError("bad_field", "'alternatives[0]' is not an object")
    return clip_text((opt_str(best, "transcript") or "").strip())
