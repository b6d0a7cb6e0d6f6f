"""A JSON-over-WebSocket speech protocol described by configuration instead of code.

For in-house or less common providers: the config says how audio travels (binary frames, or
base64 in a JSON field), which message types carry partial and final text and in which field,
and what ends a turn (a final message type, or a boolean flag on a partial).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from probed.adapters.base import (
    AdapterError,
    ConnectRequest,
    JsonObject,
    SpeechAdapter,
    Wire,
    code_text,
    decode_object,
    type_name,
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
    SpeechStopped,
    Unknown,
    clip_text,
)
from probed.audio.encoding import Encoding


@dataclass(frozen=True)
class GenericProtocol:
    """Field paths are dotted and may index lists: ``channel.alternatives.0.transcript``."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    sample_rate: int = 16000
    encoding: Encoding = "pcm16"
    chunk_ms: int = 20
    audio: Literal["binary", "base64"] = "base64"
    audio_field: str = "audio"
    # Fields sent along with every base64 audio chunk.
    audio_message: Mapping[str, object] = field(default_factory=lambda: {"type": "audio"})
    setup: tuple[Mapping[str, object], ...] = ()
    flush: Mapping[str, object] | None = field(default_factory=lambda: {"type": "flush"})
    keepalive: Mapping[str, object] | None = None
    keepalive_interval: float | None = None
    close: Mapping[str, object] | None = field(default_factory=lambda: {"type": "close"})
    type_field: str = "type"
    # No ready types: the session is ready as soon as the upgrade succeeds.
    ready_types: tuple[str, ...] = ("ready",)
    partial_types: tuple[str, ...] = ("partial",)
    final_types: tuple[str, ...] = ("final",)
    # A boolean field that, when true on a partial-type message, makes it final.
    final_flag: str | None = None
    text_field: str = "text"
    speech_started_types: tuple[str, ...] = ("speech_started",)
    speech_stopped_types: tuple[str, ...] = ("speech_stopped",)
    error_types: tuple[str, ...] = ("error",)
    error_code_field: str = "code"
    error_message_field: str = "message"
    closing_types: tuple[str, ...] = ()


def lookup(obj: object, path: str) -> object:
    """The value at a dotted path, or None when any step is missing."""
    current = obj
    for step in path.split("."):
        if isinstance(current, dict):
            current = current.get(step)
        elif isinstance(current, list) and step.isdigit() and int(step) < len(current):
            current = current[int(step)]
        else:
            return None
    return current


def _place(message: dict[str, object], path: str, value: object) -> None:
    *parents, last = path.split(".")
    node = message
    for step in parents:
        child = node.get(step)
        if not isinstance(child, dict):
            child = {}
            node[step] = child
        node = child
    node[last] = value


class GenericAdapter(SpeechAdapter):
    name = "generic"

    def __init__(self, protocol: GenericProtocol) -> None:
        self.protocol = protocol
        self.sample_rate = protocol.sample_rate
        self.chunk_ms = protocol.chunk_ms
        self.encoding = protocol.encoding
        self.ready_on_open = not protocol.ready_types
        self.keepalive_interval = protocol.keepalive_interval
        if not protocol.final_types and protocol.final_flag is None:
            raise ValueError(
                "a generic protocol needs final_types or a final_flag: what ends a turn"
            )

    def connect_request(self) -> ConnectRequest:
        return ConnectRequest(self.protocol.url, dict(self.protocol.headers))

    def setup_messages(self) -> list[Wire]:
        return [json.dumps(m) for m in self.protocol.setup]

    def audio_message(self, chunk: bytes) -> Wire:
        p = self.protocol
        if p.audio == "binary":
            return chunk
        message = json.loads(json.dumps(p.audio_message))  # a deep copy of plain JSON
        _place(message, p.audio_field, base64.b64encode(chunk).decode("ascii"))
        return json.dumps(message)

    def flush_message(self) -> Wire | None:
        return None if self.protocol.flush is None else json.dumps(self.protocol.flush)

    def keepalive_message(self) -> Wire | None:
        return None if self.protocol.keepalive is None else json.dumps(self.protocol.keepalive)

    def close_messages(self) -> list[Wire]:
        return [] if self.protocol.close is None else [json.dumps(self.protocol.close)]

    def _text(self, obj: JsonObject) -> str:
        value = lookup(obj, self.protocol.text_field)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise AdapterError("bad_field", f"{self.protocol.text_field!r} is not a string")
        return clip_text(value.strip())

    def parse(self, data: Wire) -> list[Event]:  # noqa: PLR0911 - one return per message type
        p = self.protocol
        obj = decode_object(data)
        kind = lookup(obj, p.type_field)
        if not isinstance(kind, str):
            return [Unknown(type_name(obj, p.type_field))]
        if kind in p.final_types:
            return [Final(self._text(obj), kind)]
        if kind in p.partial_types:
            text = self._text(obj)
            if p.final_flag is not None and lookup(obj, p.final_flag) is True:
                return [Final(text, p.final_flag)]
            return [Partial(text)] if text else []
        if kind in p.ready_types:
            return [Ready()]
        if kind in p.speech_started_types:
            return [SpeechStarted()]
        if kind in p.speech_stopped_types:
            return [SpeechStopped()]
        if kind in p.error_types:
            message = lookup(obj, p.error_message_field)
            return [
                ProviderError(
                    code_text(lookup(obj, p.error_code_field)),
                    clip_text(message, MAX_SHORT) if isinstance(message, str) else "",
                    fatal=True,
                )
            ]
        if kind in p.closing_types:
            return [Closing(clip_text(kind, MAX_SHORT))]
        return [Unknown(clip_text(kind, MAX_SHORT))]
