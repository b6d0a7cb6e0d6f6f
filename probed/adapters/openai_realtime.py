"""OpenAI Realtime (speech-to-speech sessions over WebSocket), GA event names.

The server opens with `session.created`; the client sends `session.update` and the session is
ready at `session.updated`. Audio goes in `input_audio_buffer.append` (base64 PCM16 24 kHz).
End of speech is the server's VAD (`turn_detection` server_vad or semantic_vad) or, with
`turn_detection: null`, the client's `input_audio_buffer.commit` plus `response.create`.

The user's transcript is joined on item ids: the turn's item is the first one the server
commits after `new_turn`; a `...input_audio_transcription.completed` for another item (a late
completion of an earlier turn) is not this turn's final. Beta event names (`response.audio.delta`
and friends) are accepted on receive (voice-protocols.md section 2.4).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from probed.adapters.base import (
    AdapterError,
    ConnectRequest,
    JsonObject,
    Wire,
    code_text,
    decode_object,
    opt_number,
    opt_object,
    opt_str,
    type_name,
    with_query,
)
from probed.adapters.events import (
    MAX_SHORT,
    Event,
    Final,
    Interrupted,
    Partial,
    ProviderError,
    Ready,
    ResponseAudio,
    ResponseText,
    SpeechStarted,
    SpeechStopped,
    ToolCall,
    TurnComplete,
    Unknown,
    clip_text,
)
from probed.adapters.voice import ToolSpec, VoiceAdapter

TurnDetection = Literal["server_vad", "semantic_vad", "manual"]
OUTPUT_MIME = "audio/pcm;rate=24000"

# Events the adapter knows and that carry nothing the probe measures.
_QUIET = frozenset({
    "session.created", "conversation.created", "conversation.item.created",
    "conversation.item.added", "conversation.item.done", "conversation.item.retrieved",
    "conversation.item.truncated", "conversation.item.deleted", "input_audio_buffer.cleared",
    "rate_limits.updated", "response.created", "response.output_item.done",
    "response.content_part.added", "response.content_part.done", "response.output_audio.done",
    "response.audio.done", "response.function_call_arguments.delta",
    "output_audio_buffer.started", "output_audio_buffer.stopped", "transcription_session.created",
})  # fmt: skip
_AUDIO_DELTA = frozenset({"response.output_audio.delta", "response.audio.delta"})
_TRANSCRIPT_DELTA = frozenset({
    "response.output_audio_transcript.delta", "response.audio_transcript.delta",
    "response.output_text.delta", "response.text.delta",
})  # fmt: skip
_TRANSCRIPT_DONE = frozenset({
    "response.output_audio_transcript.done", "response.audio_transcript.done",
    "response.output_text.done", "response.text.done",
})  # fmt: skip
_INPUT = "conversation.item.input_audio_transcription"
# Errors after which the server closes the session.
_FATAL_CODES = frozenset({"session_expired", "invalid_api_key"})


@dataclass(frozen=True)
class OpenAIRealtimeOptions:
    url: str = "wss://api.openai.com/v1/realtime"
    model: str = "gpt-realtime"
    # Either is sent as `Authorization: Bearer`; an ephemeral client secret is the browser way.
    api_key: str | None = None
    ephemeral_token: str | None = None
    # The legacy beta interface: OpenAI-Beta header and the beta session shape.
    beta: bool = False
    output_modalities: tuple[str, ...] = ("audio",)
    voice: str = "marin"
    instructions: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    turn_detection: TurnDetection = "server_vad"
    vad_threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    transcription_model: str | None = "gpt-4o-mini-transcribe"
    language: str | None = "en"
    chunk_ms: int = 20


class OpenAIRealtimeAdapter(VoiceAdapter):
    name = "openai_realtime"
    output_rate = 24000
    resumable = False

    def __init__(self, options: OpenAIRealtimeOptions | None = None) -> None:
        super().__init__()
        self.options = options or OpenAIRealtimeOptions()
        self.sample_rate = 24000  # GA audio/pcm is 24 kHz only
        self.chunk_ms = self.options.chunk_ms
        self.encoding = "pcm16"
        self._events = 0
        self._turn_item: str | None = None
        self._deltas: dict[str, str] = {}
        self._finalised: set[str] = set()
        # Function-call items as announced by response.output_item.added: item id -> (name, call).
        self._calls: dict[str, tuple[str, str | None]] = {}

    def _event_id(self) -> str:
        self._events += 1
        return f"probe_{self._events}"

    def _message(self, kind: str, **payload: object) -> Wire:
        return json.dumps({"type": kind, "event_id": self._event_id(), **payload})

    # -- requests and messages ------------------------------------------------------------

    def connect_request(self) -> ConnectRequest:
        o = self.options
        secret = o.ephemeral_token or o.api_key
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        if o.beta:
            headers["OpenAI-Beta"] = "realtime=v1"
        return ConnectRequest(with_query(o.url, {"model": o.model}), headers)

    def _turn_detection(self) -> JsonObject | None:
        o = self.options
        if o.turn_detection == "manual":
            return None
        if o.turn_detection == "semantic_vad":
            return {"type": "semantic_vad", "create_response": True, "interrupt_response": True}
        return {
            "type": "server_vad",
            "threshold": o.vad_threshold,
            "prefix_padding_ms": o.prefix_padding_ms,
            "silence_duration_ms": o.silence_duration_ms,
            "create_response": True,
            "interrupt_response": True,
        }

    def session_config(self) -> JsonObject:
        o = self.options
        transcription: JsonObject | None = None
        if o.transcription_model:
            transcription = {"model": o.transcription_model}
            if o.language:
                transcription["language"] = o.language
        tools = [
            {"type": "function", "name": t.name, "description": t.description,
             "parameters": dict(t.parameters)}
            for t in o.tools
        ]  # fmt: skip
        if o.beta:
            session: JsonObject = {
                "modalities": ["audio", "text"] if "audio" in o.output_modalities else ["text"],
                "input_audio_format": "pcm16",
                "output_audio_format": "pcm16",
                "input_audio_transcription": transcription,
                "turn_detection": self._turn_detection(),
                "voice": o.voice,
            }
        else:
            session = {
                "type": "realtime",
                "model": o.model,
                "output_modalities": list(o.output_modalities),
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": transcription,
                        "turn_detection": self._turn_detection(),
                    },
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": o.voice},
                },
            }
        if o.instructions:
            session["instructions"] = o.instructions
        if tools:
            session["tools"] = tools
            session["tool_choice"] = "auto"
        return session

    def setup_messages(self) -> list[Wire]:
        return [self._message("session.update", session=self.session_config())]

    def audio_message(self, chunk: bytes) -> Wire:
        return self._message("input_audio_buffer.append", audio=base64.b64encode(chunk).decode())

    def flush_messages(self) -> list[Wire]:
        # With server VAD the server commits and answers by itself; a commit would race it.
        if self.options.turn_detection != "manual":
            return []
        return [self._message("input_audio_buffer.commit"), self._message("response.create")]

    def flush_message(self) -> Wire | None:
        messages = self.flush_messages()
        return messages[0] if messages else None

    def tool_response_messages(self, call: ToolCall, result: Mapping[str, object]) -> list[Wire]:
        item = {"type": "function_call_output", "call_id": call.call_id or "",
                "output": json.dumps(dict(result))}  # fmt: skip
        return [
            self._message("conversation.item.create", item=item),
            self._message("response.create"),
        ]

    # -- parsing ------------------------------------------------------------------------------

    def new_turn(self) -> None:
        self._turn_item = None
        self._deltas.clear()

    def parse(self, data: Wire) -> list[Event]:  # noqa: PLR0911, PLR0912  # one branch per event
        obj = decode_object(data)
        kind = obj.get("type")
        if not isinstance(kind, str):
            return [Unknown(type_name(obj))]
        if kind in _QUIET:
            return []
        if kind in ("session.updated", "transcription_session.updated"):
            session = opt_object(obj, "session") or {}
            return [Ready(clip_text(opt_str(session, "id") or "", MAX_SHORT) or None)]
        if kind == "response.output_item.added":
            self._note_call(obj)
            return []
        if kind == "input_audio_buffer.speech_started":
            return [SpeechStarted(_millis(obj, "audio_start_ms"))]
        if kind == "input_audio_buffer.speech_stopped":
            return [SpeechStopped(_millis(obj, "audio_end_ms"))]
        if kind == "input_audio_buffer.committed":
            if self._turn_item is None:
                self._turn_item = _item_id(obj)
            return []
        if kind in _AUDIO_DELTA:
            return [ResponseAudio(_b64(obj.get("delta")), OUTPUT_MIME)]
        if kind in _TRANSCRIPT_DELTA:
            delta = opt_str(obj, "delta") or ""
            return [ResponseText(clip_text(delta))] if delta else []
        if kind in _TRANSCRIPT_DONE:
            text = opt_str(obj, "transcript") or opt_str(obj, "text") or ""
            return [ResponseText(clip_text(text), final=True)]
        if kind.startswith(_INPUT):
            return self._input_transcription(kind.removeprefix(_INPUT), obj)
        if kind == "response.function_call_arguments.done":
            return [self._tool_call(obj)]
        if kind == "response.done":
            return _response_done(obj)
        if kind == "error":
            return [_error(obj)]
        return [Unknown(clip_text(kind, MAX_SHORT))]

    def _note_call(self, obj: JsonObject) -> None:
        item = opt_object(obj, "item")
        if item is None or item.get("type") != "function_call":
            return
        item_id = opt_str(item, "id")
        if item_id and len(self._calls) < 64:
            self._calls[item_id] = (opt_str(item, "name") or "", opt_str(item, "call_id"))

    def _tool_call(self, obj: JsonObject) -> ToolCall:
        item_id = opt_str(obj, "item_id")
        known_name, known_call = self._calls.pop(item_id, ("", None)) if item_id else ("", None)
        name = opt_str(obj, "name") or known_name
        call_id = opt_str(obj, "call_id") or known_call
        arguments = opt_str(obj, "arguments") or ""
        return ToolCall(
            clip_text(name, MAX_SHORT),
            clip_text(call_id, MAX_SHORT) if call_id else None,
            clip_text(arguments),
        )

    def _input_transcription(self, suffix: str, obj: JsonObject) -> list[Event]:
        item = _item_id(obj)
        mine = self._turn_item is None or item == self._turn_item
        if suffix == ".delta":
            delta = opt_str(obj, "delta") or ""
            if not mine or not delta or item in self._finalised:
                return []
            if len(self._deltas) < 64 or item in self._deltas:
                self._deltas[item] = clip_text(self._deltas.get(item, "") + delta)
            return [Partial(self._deltas.get(item, "").strip())]
        if suffix == ".completed":
            if not mine or item in self._finalised:
                return []
            if len(self._finalised) >= 256:
                self._finalised.clear()
            self._finalised.add(item)
            self._turn_item = item
            text = opt_str(obj, "transcript") or self._deltas.get(item, "")
            return [Final(clip_text(text.strip()), "completed")]
        if suffix == ".failed":
            error = opt_object(obj, "error") or {}
            message = clip_text(opt_str(error, "message") or "", MAX_SHORT)
            return [ProviderError(code_text(error.get("code") or "transcription_failed"), message)]
        return [Unknown(clip_text(_INPUT + suffix, MAX_SHORT))]


def _item_id(obj: JsonObject) -> str:
    return clip_text(opt_str(obj, "item_id") or "", MAX_SHORT)


def _millis(obj: JsonObject, key: str) -> float | None:
    value = opt_number(obj, key)
    return None if value is None else value / 1000.0


def _b64(value: object) -> bytes:
    if not isinstance(value, str):
        raise AdapterError("bad_field", "'delta' is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise AdapterError("bad_field", "'delta' is not valid base64") from None


def _response_done(obj: JsonObject) -> list[Event]:
    response = opt_object(obj, "response") or {}
    status = opt_str(response, "status")
    if status == "cancelled":
        return [Interrupted(), TurnComplete()]
    if status == "failed":
        details = opt_object(response, "status_details") or {}
        error = opt_object(details, "error") or {}
        message = clip_text(opt_str(error, "message") or "", MAX_SHORT)
        return [ProviderError(code_text(error.get("code") or "response_failed"), message)]
    return [TurnComplete()]


def _error(obj: JsonObject) -> ProviderError:
    error = opt_object(obj, "error") or {}
    code = code_text(error.get("code") or error.get("type") or "unknown")
    message = clip_text(opt_str(error, "message") or "", MAX_SHORT)
    return ProviderError(code, message, fatal=code in _FATAL_CODES)
