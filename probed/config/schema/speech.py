"""The speech probe kind: fixture speech at real-time pace to a streaming STT provider."""

from typing import Any, Literal

from pydantic import Field

from probed.config.durations import Seconds, format_duration
from probed.config.schema.base import ProbeConfig
from probed.config.schema.common import ExistingDir
from probed.config.schema.endpoint import WebSocketEndpoint
from probed.config.schema.provider import ProviderKey
from probed.config.schema.strict import StrictModel
from probed.config.validation import Problem

SpeechAdapterName = Literal["deepgram", "assemblyai", "generic"]


class SpeechSloConfig(StrictModel):
    final: Seconds = Field(default=0.5, description="end of speech to final transcript")
    first_partial: Seconds | None = Field(
        default=None, description="speech start to first matching partial (optional)"
    )


class SpeechProbeConfig(ProviderKey, WebSocketEndpoint, ProbeConfig):
    kind: Literal["speech"]
    adapter: SpeechAdapterName = Field(description="the provider's streaming protocol")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="the adapter's own settings (model, language, endpointing_ms, ...; for "
        "generic: the message format)",
    )
    fixtures: list[str] | None = Field(
        default=None, description="clip ids to play in turn (default: every clip)"
    )
    fixtures_dir: ExistingDir | None = Field(
        default=None, description="a folder with your own clips and a manifest.json"
    )
    interval: Seconds = Field(default=15.0, description="one utterance every interval")
    end_of_speech: Literal["vad", "flush"] = Field(
        default="vad",
        description="vad: trailing silence, the provider endpoints; flush: its finalize message",
    )
    session: Literal["held", "per_utterance"] = Field(
        default="held", description="one held session, or a new session for every utterance"
    )
    trailing_silence: Seconds = Field(default=2.0, description="silence after speech (vad)")
    final_timeout: Seconds = Field(
        default=5.0, description="no final this long after the end of speech: a timeout"
    )
    slo: SpeechSloConfig = Field(
        default=SpeechSloConfig(), description="thresholds; each is a histogram bucket boundary"
    )

    def _semantic_problems(self) -> list[Problem]:
        problems = super()._semantic_problems()
        if self.slo.final > self.final_timeout:
            limit = format_duration(self.final_timeout)
            problems.append((("slo", "final"), f"must not be longer than final_timeout ({limit})"))
        if not problems:
            # Built and played once here so that a bad option, a missing or corrupt clip or a
            # sample rate the adapter cannot take is a `probed check` error, not a 3 am surprise.
            from probed.speech.provider import check_speech_config

            problems.extend(check_speech_config(self))
        return problems

    @property
    def adapter_label(self) -> str:
        return f"{self.adapter}/{self.end_of_speech}"

    def slo_thresholds(self) -> tuple[float, ...]:
        first = () if self.slo.first_partial is None else (self.slo.first_partial,)
        return (self.slo.final, *first)
