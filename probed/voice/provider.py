"""From a voice_agent probe's config to its adapter, its clips and its tool expectations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from probed.adapters import (
    GeminiLiveAdapter,
    GeminiLiveOptions,
    OpenAIRealtimeAdapter,
    OpenAIRealtimeOptions,
)
from probed.adapters.voice import ToolSpec, VoiceAdapter
from probed.audio.chunks import UtteranceAudio
from probed.audio.errors import AudioError
from probed.config.schema.voice_agent import VoiceAgentProbeConfig
from probed.config.validation import Problem
from probed.speech.fixtures import load_utterances
from probed.voice.tools import ToolExpectation

# Set from the probe's own keys; in `options` they would contradict them.
_RESERVED = frozenset({"url", "api_key", "ephemeral_token", "model", "tools"})
_TUPLES = ("response_modalities", "output_modalities")


def tool_spec(cfg: VoiceAgentProbeConfig) -> ToolSpec:
    return ToolSpec(cfg.tool.name, cfg.tool.description, dict(cfg.tool.parameters))


def build_voice_adapter(cfg: VoiceAgentProbeConfig) -> VoiceAdapter:
    """A fresh adapter (they keep per-session turn state). Raises TypeError/ValueError."""
    options: dict[str, Any] = dict(cfg.options)
    clash = sorted(_RESERVED.intersection(options))
    if clash:
        raise ValueError(f"set {', '.join(clash)} as the probe's own keys, not in options")
    for key in _TUPLES:
        if isinstance(options.get(key), list):
            options[key] = tuple(options[key])
    common: dict[str, Any] = {
        "url": cfg.url,
        "api_key": cfg.key,
        "ephemeral_token": cfg.token,
        "tools": (tool_spec(cfg),),
    }
    if cfg.model is not None:
        common["model"] = cfg.model
    vad = cfg.end_of_speech == "vad"
    if cfg.adapter == "gemini_live":
        if "automatic_activity_detection" in options:
            raise ValueError("automatic_activity_detection follows end_of_speech")
        return GeminiLiveAdapter(
            GeminiLiveOptions(**common, automatic_activity_detection=vad, **options)
        )
    detection = options.pop("turn_detection", "server_vad")
    if not vad or detection == "manual":
        if vad:
            raise ValueError('turn_detection "manual" is end_of_speech: flush')
        detection = "manual"
    if detection not in ("server_vad", "semantic_vad", "manual"):
        raise ValueError(f"unknown turn_detection {detection!r}")
    return OpenAIRealtimeAdapter(
        OpenAIRealtimeOptions(**common, turn_detection=detection, **options)
    )


@dataclass(frozen=True)
class VoiceClips:
    turns: list[UtteranceAudio]
    interruption: UtteranceAudio | None


def load_clips(cfg: VoiceAgentProbeConfig, adapter: VoiceAdapter) -> VoiceClips:
    """The clips cut for the adapter; the conversation sends silence after them itself."""
    turns = load_utterances(adapter, cfg.fixtures, directory=cfg.fixtures_dir, trailing=0.0)
    interruption = None
    if cfg.barge_in is not None:
        (interruption,) = load_utterances(
            adapter, [cfg.barge_in.fixture], directory=cfg.fixtures_dir, trailing=0.0
        )
    return VoiceClips(turns, interruption)


def expectations(cfg: VoiceAgentProbeConfig) -> dict[str, ToolExpectation]:
    """Fixture id -> the call it should cause; fixtures not listed should cause none."""
    return {
        clip_id: ToolExpectation(e.tool or cfg.tool.name, dict(e.arguments))
        for clip_id, e in cfg.expect.items()
        if e is not None
    }


def check_voice_config(cfg: VoiceAgentProbeConfig) -> list[Problem]:
    try:
        adapter = build_voice_adapter(cfg)
    except (TypeError, ValueError) as exc:
        return [(("options",), f"not valid for the {cfg.adapter} adapter: {exc}")]
    try:
        load_clips(cfg, adapter)
    except AudioError as exc:
        if cfg.barge_in is not None and cfg.barge_in.fixture in str(exc):
            return [(("barge_in", "fixture"), str(exc))]
        return [(("fixtures",), str(exc))]
    unknown = sorted(set(cfg.expect) - set(cfg.fixtures))
    if unknown and "expect" in cfg.model_fields_set:
        return [(("expect",), f"fixtures that are never played: {', '.join(unknown)}")]
    return []
