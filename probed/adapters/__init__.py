"""Sans-I/O provider adapters: requests and messages out, typed events in."""

from probed.adapters.assemblyai import AssemblyAIAdapter, AssemblyAIOptions
from probed.adapters.base import AdapterError, ConnectRequest, SpeechAdapter, Wire
from probed.adapters.deepgram import DeepgramAdapter, DeepgramOptions
from probed.adapters.gemini_live import GeminiLiveAdapter, GeminiLiveOptions
from probed.adapters.generic import GenericAdapter, GenericProtocol
from probed.adapters.openai_realtime import OpenAIRealtimeAdapter, OpenAIRealtimeOptions
from probed.adapters.voice import ToolSpec, VoiceAdapter

__all__ = [
    "AdapterError",
    "AssemblyAIAdapter",
    "AssemblyAIOptions",
    "ConnectRequest",
    "DeepgramAdapter",
    "DeepgramOptions",
    "GeminiLiveAdapter",
    "GeminiLiveOptions",
    "GenericAdapter",
    "GenericProtocol",
    "OpenAIRealtimeAdapter",
    "OpenAIRealtimeOptions",
    "SpeechAdapter",
    "ToolSpec",
    "VoiceAdapter",
    "Wire",
]
