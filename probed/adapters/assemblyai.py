"""AssemblyAI Universal Streaming, v3 (`/v3/ws`).

Configuration in the query string, raw binary audio (about 50 ms a frame), JSON text control
messages. `Begin` is the ready signal; a `Turn` with `end_of_turn` is final; with format_turns a
formatted copy of the same turn follows, which is a revision, not a second final. See
shared/reference/voice-protocols.md section 4.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from probed.adapters.base import (
    ConnectRequest,
    JsonObject,
    SpeechAdapter,
    Wire,
    code_text,
    decode_object,
    opt_bool,
    opt_list,
    opt_number,
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
    Ready,
    SpeechStarted,
    Unknown,
    clip_text,
)
from probed.audio.encoding import Encoding

_WIRE_ENCODING = {"pcm16": "pcm_s16le", "mulaw": "pcm_mulaw"}


@dataclass(frozen=True)
class AssemblyAIOptions:
    url: str = "wss://streaming.assemblyai.com/v3/ws"
    api_key: str | None = None
    speech_model: str = "universal-streaming-english"
    sample_rate: int = 16000
    encoding: Encoding = "pcm16"
    chunk_ms: int = 50
    format_turns: bool = True
    min_turn_silence_ms: int | None = None
    max_turn_silence_ms: int | None = None
    extra_query: dict[str, str] = field(default_factory=dict)


class AssemblyAIAdapter(SpeechAdapter):
    name = "assemblyai"

    def __init__(self, options: AssemblyAIOptions | None = None) -> None:
        self.options = options or AssemblyAIOptions()
        self.sample_rate = self.options.sample_rate
        self.chunk_ms = self.options.chunk_ms
        self.encoding = self.options.encoding
        self._ended_turns: set[int] = set()

    def connect_request(self) -> ConnectRequest:
        o = self.options
        query: dict[str, str | int | float | bool | None] = {
            "sample_rate": o.sample_rate,
            "encoding": _WIRE_ENCODING[o.encoding],
            "speech_model": o.speech_model,
            "format_turns": o.format_turns,
            "min_turn_silence": o.min_turn_silence_ms,
            "max_turn_silence": o.max_turn_silence_ms,
            **o.extra_query,
        }
        # The raw key, no scheme: that is what AssemblyAI expects.
        headers = {"Authorization": o.api_key} if o.api_key else {}
        return ConnectRequest(with_query(o.url, query), headers)

    def audio_message(self, chunk: bytes) -> Wire:
        return chunk

    def flush_message(self) -> Wire:
        return json.dumps({"type": "ForceEndpoint"})

    def keepalive_message(self) -> Wire:
        return json.dumps({"type": "KeepAlive"})

    def close_messages(self) -> list[Wire]:
        return [json.dumps({"type": "Terminate"})]

    def new_turn(self) -> None:
        # Turn numbers keep counting over a session; only their "already final" memory is
        # bounded, by forgetting it between utterances.
        self._ended_turns.clear()

    def parse(self, data: Wire) -> list[Event]:  # noqa: PLR0911 - one return per message type
        obj = decode_object(data)
        kind = obj.get("type")
        if kind == "Turn":
            return self._turn(obj)
        if kind == "Begin":
            return [Ready(clip_text(opt_str(obj, "id") or "", MAX_SHORT) or None)]
        if kind == "SpeechStarted":
            ms = opt_number(obj, "timestamp")
            return [SpeechStarted(None if ms is None else ms / 1000)]
        if kind == "Termination":
            return [Closing("termination")]
        if kind == "Error":
            message = clip_text(opt_str(obj, "error") or "", MAX_SHORT)
            return [ProviderError(code_text(obj.get("error_code")), message, fatal=True)]
        if kind == "Warning":
            message = clip_text(opt_str(obj, "warning") or "", MAX_SHORT)
            return [ProviderError(code_text(obj.get("warning_code")), message, fatal=False)]
        return [Unknown(type_name(obj))]

    def _turn(self, obj: JsonObject) -> list[Event]:
        text = clip_text((opt_str(obj, "transcript") or "").strip())
        if not text:
            # Universal-Streaming fills `transcript` with final words only; the words list
            # carries the in-progress ones, which is what a user would see appear.
            words = [w.get("text") for w in opt_list(obj, "words") if isinstance(w, dict)]
            text = clip_text(" ".join(w for w in words if isinstance(w, str)).strip())
        order = opt_number(obj, "turn_order")
        if not opt_bool(obj, "end_of_turn"):
            return [Partial(text)] if text else []
        formatted = opt_bool(obj, "turn_is_formatted")
        key = int(order) if order is not None and math.isfinite(order) else -1
        if formatted and key in self._ended_turns:
            return [Final(text, "end_of_turn_formatted", revision=True)]
        self._ended_turns.add(key)
        return [Final(text, "end_of_turn_formatted" if formatted else "end_of_turn")]
