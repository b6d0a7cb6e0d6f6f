"""Sans-I/O provider adapters: requests and messages out, typed events in."""

from probed.adapters.assemblyai import AssemblyAIAdapter, AssemblyAIOptions
from probed.adapters.base import AdapterError, ConnectRequest, SpeechAdapter, Wire
from probed.adapters.deepgram import DeepgramAdapter, DeepgramOptions
from probed.adapters.generic import GenericAdapter, GenericProtocol

__all__ = [
    "AdapterError",
    "AssemblyAIAdapter",
    "AssemblyAIOptions",
    "ConnectRequest",
    "DeepgramAdapter",
    "DeepgramOptions",
    "GenericAdapter",
    "GenericProtocol",
    "SpeechAdapter",
    "Wire",
]
