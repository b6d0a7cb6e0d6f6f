"""What a voice-agent adapter adds to a speech adapter: tools, tool answers, resumption.

A voice agent (Gemini Live, OpenAI Realtime) hears the user like a speech-to-text service and
also answers: audio, text, and calls to functions the client declared. The probe declares one
tool, answers each call with a canned result so the conversation goes on, and resumes the
session with the latest handle after a go-away where the provider supports it.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

from probed.adapters.base import SpeechAdapter, Wire
from probed.adapters.events import Event, ToolCall


@dataclass(frozen=True)
class ToolSpec:
    """A function the agent may call; `parameters` is a JSON schema (type object)."""

    name: str
    description: str = ""
    parameters: Mapping[str, object] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


def canned_result(call: ToolCall) -> dict[str, object]:
    """What the probe answers to any call: enough for the agent to go on speaking."""
    return {"result": "ok", "tool": call.name}


def parse_arguments(arguments: str) -> dict[str, object] | None:
    """A tool call's arguments as an object; None when they are not a JSON object."""
    try:
        value = json.loads(arguments)
    except (json.JSONDecodeError, RecursionError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class VoiceAdapter(SpeechAdapter):
    """A speech adapter that also carries the agent's answer side."""

    # Sample rate of the agent's response audio (PCM16 mono), for the playback clock.
    output_rate: int
    # Whether the provider can resume a session on a new connection with a handle.
    resumable: bool = False

    def __init__(self) -> None:
        self.resume_handle: str | None = None

    def resume_with(self, handle: str | None) -> None:
        """The handle the next setup carries (None starts a fresh session)."""
        self.resume_handle = handle

    def turn_start_messages(self) -> list[Wire]:
        """Sent just before a turn's audio (manual activity signalling)."""
        return []

    def flush_messages(self) -> list[Wire]:
        """Sent right after the end of speech in flush mode (commit, activity end, reply)."""
        message = self.flush_message()
        return [] if message is None else [message]

    @abstractmethod
    def tool_response_messages(self, call: ToolCall, result: Mapping[str, object]) -> list[Wire]:
        """The answer to `call`, and whatever makes the agent continue after it."""

    def settle(self) -> list[Event]:
        """The caller's quiet timer ran out after the end of speech: finalise what you hold.

        For providers without a reliable final transcript event (Gemini Live, section 1.8
        rule d); the adapter has no clock, so the caller decides when it is quiet.
        """
        return []
