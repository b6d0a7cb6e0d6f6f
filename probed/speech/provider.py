"""From a speech probe's config to a provider adapter and the endpoint to dial."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from probed.adapters import (
    AssemblyAIAdapter,
    AssemblyAIOptions,
    DeepgramAdapter,
    DeepgramOptions,
    GenericAdapter,
    GenericProtocol,
    SpeechAdapter,
)
from probed.audio.errors import AudioError
from probed.config.schema.common import ConnectionConfig, KeepaliveConfig, TlsConfig
from probed.config.schema.framing import FramingConfig
from probed.config.schema.scripting import SetupStepConfig
from probed.config.schema.speech import SpeechProbeConfig
from probed.config.schema.voice_agent import VoiceAgentProbeConfig
from probed.config.validation import Problem
from probed.speech.fixtures import load_utterances


def build_adapter(cfg: SpeechProbeConfig) -> SpeechAdapter:
    """A fresh adapter (they keep per-session turn state). Raises TypeError/ValueError."""
    options: dict[str, Any] = dict(cfg.options)
    if cfg.adapter == "deepgram":
        return DeepgramAdapter(DeepgramOptions(url=cfg.url, api_key=cfg.key, **options))
    if cfg.adapter == "assemblyai":
        return AssemblyAIAdapter(AssemblyAIOptions(url=cfg.url, api_key=cfg.key, **options))
    for key in ("ready_types", "partial_types", "final_types", "error_types", "setup"):
        if isinstance(options.get(key), list):
            options[key] = tuple(options[key])
    return GenericAdapter(GenericProtocol(url=cfg.url, **options))


def check_speech_config(cfg: SpeechProbeConfig) -> list[Problem]:
    try:
        adapter = build_adapter(cfg)
    except (TypeError, ValueError) as exc:
        return [(("options",), f"not valid for the {cfg.adapter} adapter: {exc}")]
    try:
        load_utterances(
            adapter, cfg.fixtures, directory=cfg.fixtures_dir, trailing=cfg.trailing_silence
        )
    except AudioError as exc:
        return [(("fixtures",), str(exc))]
    return []


@dataclass(frozen=True)
class ProviderEndpoint:
    """The probe's endpoint settings with the adapter's URL and headers (auth, query)."""

    cfg: SpeechProbeConfig | VoiceAgentProbeConfig
    adapter: SpeechAdapter

    @property
    def url(self) -> str:
        return self.adapter.connect_request().url

    @property
    def target(self) -> str:
        return self.cfg.target

    @property
    def subprotocols(self) -> Sequence[str]:
        return [*self.cfg.subprotocols, *self.adapter.connect_request().subprotocols]

    @property
    def tls(self) -> TlsConfig:
        return self.cfg.tls

    @property
    def connection(self) -> ConnectionConfig:
        connection = self.cfg.connection
        if not self.adapter.connect_request().library_pings and connection.keepalive.mode == "ping":
            # The provider answers WebSocket pings too slowly (Gemini Live: 8-30 s): the ping
            # keepalive would end healthy sessions. The audio itself, and the turn timeouts,
            # show a dead session; a `message` keepalive still applies if configured.
            return connection.model_copy(update={"keepalive": KeepaliveConfig(mode="off")})
        return connection

    @property
    def setup(self) -> Sequence[SetupStepConfig]:
        return self.cfg.setup

    @property
    def framing(self) -> FramingConfig | None:
        return None

    def request_headers(self) -> dict[str, str]:
        return {**self.cfg.request_headers(), **self.adapter.connect_request().headers}

    def proxy(self) -> str | None:
        return self.cfg.proxy()
