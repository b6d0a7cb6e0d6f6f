"""Shared pieces of the voice tests: fixtures cut for an adapter, a tool, a talk helper."""

from __future__ import annotations

from probed.adapters import GeminiLiveAdapter, GeminiLiveOptions, OpenAIRealtimeAdapter
from probed.adapters.openai_realtime import OpenAIRealtimeOptions
from probed.adapters.voice import ToolSpec, VoiceAdapter
from probed.audio.chunks import UtteranceAudio, prepare
from probed.audio.manifest import load_manifest
from probed.voice.tools import ToolExpectation

CODE_TOOL = ToolSpec(
    name="generate_code",
    description="Write a function the user asks for.",
    parameters={
        "type": "object",
        "properties": {
            "description": {"type": "string"},
            "operation": {"type": "string"},
            "arity": {"type": "integer"},
        },
    },
)
EXPECT_ADD = ToolExpectation("generate_code", {"operation": "add", "arity": 2})


def clip(clip_id: str, rate: int, chunk_ms: int = 20) -> UtteranceAudio:
    return prepare(load_manifest().load(clip_id, rate=rate), chunk_ms=chunk_ms, trailing=0.0)


def gemini(url: str, *, manual: bool = False, api_key: str | None = None) -> GeminiLiveAdapter:
    return GeminiLiveAdapter(
        GeminiLiveOptions(
            url=url,
            api_key=api_key,
            model="gemini-live-test",
            tools=(CODE_TOOL,),
            automatic_activity_detection=not manual,
            silence_duration_ms=300,
        )
    )


def openai(url: str, *, manual: bool = False, api_key: str | None = None) -> OpenAIRealtimeAdapter:
    return OpenAIRealtimeAdapter(
        OpenAIRealtimeOptions(
            url=url,
            api_key=api_key,
            tools=(CODE_TOOL,),
            turn_detection="manual" if manual else "server_vad",
            silence_duration_ms=300,
        )
    )


def adapter_for(protocol: str, url: str, *, manual: bool = False) -> VoiceAdapter:
    return gemini(url, manual=manual) if protocol == "gemini" else openai(url, manual=manual)
