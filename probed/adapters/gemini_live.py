"""Google Gemini Live (BidiGenerateContent over WebSocket).

`setup` goes first and carries everything: model, response modalities, transcription switches,
function declarations, activity detection, resumption. The server answers `setupComplete` and
then speaks JSON in binary frames (text frames accepted too). proto3 JSON allows both
lowerCamelCase and snake_case keys; both are read at every level.

There is no authoritative final user transcript (voice-protocols.md section 1.8): fragments of
`inputTranscription` accumulate, and the turn's text is declared final at the earliest of
`finished: true`, the model committing to an answer (audio, output transcription, tool call,
generationComplete, turnComplete) after at least one fragment, or the caller's quiet timer
(`settle`). The Final event names the rule that fired.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from probed.adapters.base import (
    AdapterError,
    ConnectRequest,
    JsonObject,
    Wire,
    code_text,
    decode_object,
    with_query,
)
from probed.adapters.events import (
    MAX_SHORT,
    Event,
    Final,
    GoAway,
    Interrupted,
    Partial,
    ProviderError,
    Ready,
    ResponseAudio,
    ResponseText,
    ResumptionHandle,
    SpeechStarted,
    SpeechStopped,
    ToolCall,
    TurnComplete,
    Unknown,
    clip_text,
)
from probed.adapters.voice import ToolSpec, VoiceAdapter

DEFAULT_URL = (
    "wss://generativelanguage.googleapis.com/ws/"
    "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")


def snake(camel: str) -> str:
    return _SNAKE.sub("_", camel).lower()


def field_of(obj: Mapping[str, object], camel: str) -> object:
    """A field by its lowerCamelCase name or its snake_case spelling."""
    value = obj.get(camel)
    return obj.get(snake(camel)) if value is None else value


def _object(obj: Mapping[str, object], camel: str) -> JsonObject | None:
    value = field_of(obj, camel)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise AdapterError("bad_field", f"{camel!r} is not an object")
    return value


def _list(obj: Mapping[str, object], camel: str) -> list[object]:
    value = field_of(obj, camel)
    if value is None:
        return []
    if not isinstance(value, list):
        raise AdapterError("bad_field", f"{camel!r} is not a list")
    return value


def _str(obj: Mapping[str, object], camel: str) -> str | None:
    value = field_of(obj, camel)
    if value is None:
        return None
    if not isinstance(value, str):
        raise AdapterError("bad_field", f"{camel!r} is not a string")
    return value


def _flag(obj: Mapping[str, object], camel: str) -> bool:
    value = field_of(obj, camel)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise AdapterError("bad_field", f"{camel!r} is not a boolean")
    return value


def duration_seconds(value: object) -> float | None:
    """A protobuf Duration as JSON ("50s", "1.5s"), or a plain number of seconds."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1))
    else:
        raise AdapterError("bad_field", "duration is neither a number nor like '50s'")
    if not 0 <= seconds < 1e9:
        raise AdapterError("bad_field", "duration out of range")
    return seconds


def b64_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise AdapterError("bad_field", f"{what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise AdapterError("bad_field", f"{what} is not valid base64") from None


@dataclass(frozen=True)
class GeminiLiveOptions:
    url: str = DEFAULT_URL
    # Sent as the x-goog-api-key header (as the official SDK does), never in the URL.
    api_key: str | None = None
    # An ephemeral token goes in the access_token query parameter (BidiGenerateContentConstrained).
    ephemeral_token: str | None = None
    # A bare id becomes "models/<id>"; a full Vertex resource path is passed as is.
    model: str = "gemini-2.5-flash-native-audio-preview-12-2025"
    response_modalities: tuple[str, ...] = ("AUDIO",)
    input_transcription: bool = True
    output_transcription: bool = True
    tools: tuple[ToolSpec, ...] = ()
    system_instruction: str | None = None
    # False: the client brackets each turn with activityStart / activityEnd (manual VAD).
    automatic_activity_detection: bool = True
    silence_duration_ms: int | None = None
    prefix_padding_ms: int | None = None
    end_of_speech_sensitivity: str | None = None
    session_resumption: bool = True
    context_compression: bool = False
    sample_rate: int = 16000
    chunk_ms: int = 20


class GeminiLiveAdapter(VoiceAdapter):
    name = "gemini_live"
    output_rate = 24000
    resumable = True

    def __init__(self, options: GeminiLiveOptions | None = None) -> None:
        super().__init__()
        self.options = options or GeminiLiveOptions()
        self.sample_rate = self.options.sample_rate
        self.chunk_ms = self.options.chunk_ms
        self.encoding = "pcm16"
        self._fragments: list[str] = []
        self._final_sent = False
        # Fragments that came after this turn's final: late or duplicated transcription.
        self.late_fragments = 0

    # -- requests and messages ------------------------------------------------------------

    def connect_request(self) -> ConnectRequest:
        o = self.options
        headers = {"x-goog-api-key": o.api_key} if o.api_key else {}
        url = with_query(o.url, {"access_token": o.ephemeral_token}) if o.ephemeral_token else o.url
        return ConnectRequest(url, headers, library_pings=False)

    def setup_message(self) -> JsonObject:
        o = self.options
        model = o.model if "/" in o.model else f"models/{o.model}"
        setup: JsonObject = {
            "model": model,
            "generationConfig": {"responseModalities": list(o.response_modalities)},
        }
        if o.system_instruction:
            setup["systemInstruction"] = {"parts": [{"text": o.system_instruction}]}
        if o.tools:
            declarations = [
                {"name": t.name, "description": t.description, "parameters": dict(t.parameters)}
                for t in o.tools
            ]
            setup["tools"] = [{"functionDeclarations": declarations}]
        detection: JsonObject = {"disabled": not o.automatic_activity_detection}
        for key, value in (
            ("silenceDurationMs", o.silence_duration_ms),
            ("prefixPaddingMs", o.prefix_padding_ms),
            ("endOfSpeechSensitivity", o.end_of_speech_sensitivity),
        ):
            if value is not None:
                detection[key] = value
        setup["realtimeInputConfig"] = {"automaticActivityDetection": detection}
        if o.input_transcription:
            setup["inputAudioTranscription"] = {}
        if o.output_transcription:
            setup["outputAudioTranscription"] = {}
        if o.session_resumption:
            setup["sessionResumption"] = (
                {"handle": self.resume_handle} if self.resume_handle else {}
            )
        if o.context_compression:
            setup["contextWindowCompression"] = {"slidingWindow": {}}
        return {"setup": setup}

    def setup_messages(self) -> list[Wire]:
        return [json.dumps(self.setup_message())]

    def audio_message(self, chunk: bytes) -> Wire:
        data = base64.b64encode(chunk).decode("ascii")
        mime = f"audio/pcm;rate={self.sample_rate}"
        return json.dumps({"realtimeInput": {"audio": {"data": data, "mimeType": mime}}})

    def turn_start_messages(self) -> list[Wire]:
        if self.options.automatic_activity_detection:
            return []
        return [json.dumps({"realtimeInput": {"activityStart": {}}})]

    def flush_message(self) -> Wire:
        # activityEnd is only valid with manual activity detection (1007 otherwise).
        if self.options.automatic_activity_detection:
            return json.dumps({"realtimeInput": {"audioStreamEnd": True}})
        return json.dumps({"realtimeInput": {"activityEnd": {}}})

    def tool_response_messages(self, call: ToolCall, result: Mapping[str, object]) -> list[Wire]:
        # The Gemini API requires the call's id in each function response.
        response = {"id": call.call_id or "", "name": call.name, "response": dict(result)}
        return [json.dumps({"toolResponse": {"functionResponses": [response]}})]

    # -- the user's transcript ------------------------------------------------------------

    def new_turn(self) -> None:
        self._fragments.clear()
        self._final_sent = False

    def _finalise(self, rule: str) -> list[Event]:
        if self._final_sent or not self._fragments:
            return []
        self._final_sent = True
        return [Final(clip_text("".join(self._fragments).strip()), rule)]

    def settle(self) -> list[Event]:
        return self._finalise("quiet")

    def _input_fragment(self, transcription: JsonObject) -> list[Event]:
        text = _str(transcription, "text") or ""
        finished = _flag(transcription, "finished")
        if self._final_sent:
            if text:
                self.late_fragments += 1
            return []
        events: list[Event] = []
        if text:
            self._fragments.append(text)
            events.append(Partial(clip_text("".join(self._fragments).strip())))
        if finished:
            events.extend(self._finalise("finished"))
        return events

    # -- parsing ------------------------------------------------------------------------------

    def parse(self, data: Wire) -> list[Event]:
        obj = decode_object(data)
        events: list[Event] = []
        known = False
        if (setup_complete := _object(obj, "setupComplete")) is not None:
            known = True
            events.append(
                Ready(clip_text(_str(setup_complete, "sessionId") or "", MAX_SHORT) or None)
            )
        if (content := _object(obj, "serverContent")) is not None:
            known = True
            events.extend(self._server_content(content))
        if (tool_call := _object(obj, "toolCall")) is not None:
            known = True
            events.extend(self._tool_call(tool_call))
        if _object(obj, "toolCallCancellation") is not None:
            known = True
            events.append(Unknown("toolCallCancellation"))
        if (go_away := _object(obj, "goAway")) is not None:
            known = True
            events.append(GoAway(duration_seconds(field_of(go_away, "timeLeft"))))
        if (update := _object(obj, "sessionResumptionUpdate")) is not None:
            known = True
            handle = _str(update, "newHandle") or ""
            events.append(
                ResumptionHandle(clip_text(handle), _flag(update, "resumable") and bool(handle))
            )
        if (activity := _object(obj, "voiceActivity")) is not None:
            known = True
            events.extend(_voice_activity(activity))
        if _object(obj, "usageMetadata") is not None:
            known = True
        if (error := _object(obj, "error")) is not None:
            known = True
            message = clip_text(_str(error, "message") or "", MAX_SHORT)
            code = field_of(error, "status") or field_of(error, "code")
            events.append(ProviderError(code_text(code), message, fatal=True))
        if not known:
            events.append(Unknown(clip_text(",".join(sorted(obj)) or "<empty>", MAX_SHORT)))
        return events

    def _server_content(self, content: JsonObject) -> list[Event]:
        # 3.1+ models put several fields in one message: read them all, in wire order of meaning.
        events: list[Event] = []
        events.extend(self._interim(_object(content, "interimInputTranscription")))
        if (transcription := _object(content, "inputTranscription")) is not None:
            events.extend(self._input_fragment(transcription))
        if (turn := _object(content, "modelTurn")) is not None:
            parts = _list(turn, "parts")
            if parts:
                events.extend(self._finalise("model_turn"))
            for part in parts:
                if not isinstance(part, dict):
                    raise AdapterError("bad_field", "a modelTurn part is not an object")
                events.extend(_part(part))
        if (output := _object(content, "outputTranscription")) is not None:
            events.extend(self._finalise("output_transcription"))
            text = _str(output, "text") or ""
            if text:
                events.append(ResponseText(clip_text(text)))
        if _flag(content, "generationComplete"):
            events.extend(self._finalise("generation_complete"))
        if _flag(content, "interrupted"):
            events.append(Interrupted())
        if _flag(content, "turnComplete"):
            events.extend(self._finalise("turn_complete"))
            events.append(TurnComplete())
        return events

    def _interim(self, interim: JsonObject | None) -> list[Event]:
        if interim is None or self._final_sent:
            return []
        text = _str(interim, "text") or ""
        return [Partial(clip_text(("".join(self._fragments) + text).strip()))] if text else []

    def _tool_call(self, tool_call: JsonObject) -> list[Event]:
        events = self._finalise("tool_call")
        for call in _list(tool_call, "functionCalls"):
            if not isinstance(call, dict):
                raise AdapterError("bad_field", "a function call is not an object")
            name = _str(call, "name") or ""
            args = field_of(call, "args")
            try:
                arguments = json.dumps(args if args is not None else {})
            except (TypeError, ValueError, RecursionError):
                raise AdapterError("bad_field", "function call args are not JSON") from None
            call_id = _str(call, "id")
            events.append(
                ToolCall(
                    clip_text(name, MAX_SHORT),
                    clip_text(call_id, MAX_SHORT) if call_id else None,
                    clip_text(arguments),
                )
            )
        return events


def _part(part: JsonObject) -> list[Event]:
    if (inline := _object(part, "inlineData")) is not None:
        mime = _str(inline, "mimeType") or ""
        if mime.startswith("audio/"):
            return [
                ResponseAudio(
                    b64_bytes(field_of(inline, "data"), "inlineData.data"),
                    clip_text(mime, MAX_SHORT),
                )
            ]
        return [Unknown(clip_text(f"inlineData:{mime}", MAX_SHORT))]
    if _flag(part, "thought"):
        return []
    text = _str(part, "text")
    return [ResponseText(clip_text(text))] if text else []


def _voice_activity(activity: JsonObject) -> list[Event]:
    kind = _str(activity, "type") or _str(activity, "voiceActivityType")
    offset = duration_seconds(field_of(activity, "audioOffset"))
    if kind == "ACTIVITY_START":
        return [SpeechStarted(offset)]
    if kind == "ACTIVITY_END":
        return [SpeechStopped(offset)]
    return [Unknown(clip_text(f"voiceActivity:{kind}", MAX_SHORT))]
