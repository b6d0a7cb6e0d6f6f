"""The voice_agent probe kind: a held conversation with a realtime voice model (Gemini Live,
OpenAI Realtime) that must call a declared tool and answer aloud."""

from typing import Any, Final, Literal

from pydantic import Field, SecretStr

from probed.config.durations import Seconds
from probed.config.schema.base import ProbeConfig
from probed.config.schema.common import ExistingDir
from probed.config.schema.endpoint import WebSocketEndpoint
from probed.config.schema.provider import ProviderKey
from probed.config.schema.strict import StrictModel
from probed.config.validation import Problem

VoiceAdapterName = Literal["gemini_live", "openai_realtime"]
DEFAULT_FIXTURES: Final = ("create_function", "run_tests")


def _code_parameters() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "description": {"type": "string", "description": "what the function does"},
            "operation": {"type": "string", "description": "add, subtract, sort, ..."},
            "arity": {"type": "integer", "description": "how many inputs it takes"},
        },
    }


class ToolConfig(StrictModel):
    name: str = Field(
        default="generate_code",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$",
        description="the function the agent may call",
    )
    description: str = Field(
        default="Write the function the user asks for.",
        description="what the agent is told the tool does",
    )
    parameters: dict[str, Any] = Field(
        default_factory=_code_parameters,
        description="its JSON schema (type object); the probe answers every call with a canned "
        "result so the conversation goes on",
    )

    def _semantic_problems(self) -> list[Problem]:
        if self.parameters.get("type") != "object":
            return [(("parameters",), 'must be a JSON schema with "type": "object"')]
        return []


class ToolCallExpectation(StrictModel):
    tool: str | None = Field(
        default=None,
        description="the function the fixture should make the agent call "
        "(default: the declared tool)",
    )
    arguments: dict[str, Any] = Field(
        default_factory=dict,
        description="arguments the call must carry (strings compared case-insensitively; "
        "others may be present too)",
    )


def _default_expect() -> dict[str, ToolCallExpectation | None]:
    return {"create_function": ToolCallExpectation(arguments={"operation": "add", "arity": 2})}


class BargeInConfig(StrictModel):
    every: int = Field(
        default=3, ge=1, description="every n-th turn is a barge-in (1: all of them)"
    )
    after: Seconds = Field(
        default=0.3,
        description="the answer has played this long (on the probe's playback clock) when the "
        "probe starts speaking over it",
    )
    yield_timeout: Seconds = Field(
        default=2.0,
        description="the agent still talking this long after the interruption began: counted "
        "as never yielding",
    )
    fixture: str = Field(default="stop_music", description="the clip said over the answer")


class VoiceSloConfig(StrictModel):
    response: Seconds = Field(default=1.0, description="end of speech to first response audio")
    tool_call: Seconds = Field(default=1.0, description="end of speech to the complete tool call")
    final: Seconds = Field(default=0.5, description="end of speech to the final user transcript")


class VoiceAgentProbeConfig(ProviderKey, WebSocketEndpoint, ProbeConfig):
    kind: Literal["voice_agent"]
    adapter: VoiceAdapterName = Field(description="the provider's realtime protocol")
    ephemeral_token: SecretStr | None = Field(
        default=None,
        description="a short-lived token instead of the key (Gemini: access_token query; "
        "OpenAI: a client secret as bearer)",
    )
    model: str | None = Field(default=None, description="the model id (default: the adapter's)")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="the adapter's own settings (voice, instructions, silence_duration_ms, "
        "language, ...); not url, keys, model or tools",
    )
    # A factory: the default's JSON schema (its `properties`) would read as config keys.
    tool: ToolConfig = Field(
        default_factory=ToolConfig, description="the tool declared in the session setup"
    )
    expect: dict[str, ToolCallExpectation | None] = Field(
        default_factory=_default_expect,
        description="fixture id -> the tool call it should cause (null or absent: no call); "
        "counted in probe_voice_tool_calls_total{result=ok|wrong|missing}",
    )
    fixtures: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FIXTURES),
        min_length=1,
        description="clip ids said in turn, one per interval",
    )
    fixtures_dir: ExistingDir | None = Field(
        default=None, description="a folder with your own clips and a manifest.json"
    )
    interval: Seconds = Field(default=15.0, description="one turn every interval")
    end_of_speech: Literal["vad", "flush"] = Field(
        default="vad",
        description="vad: silence follows the speech and the provider's VAD ends the turn; "
        "flush: the probe ends it (Gemini activityEnd, OpenAI commit + response.create)",
    )
    answer_timeout: Seconds = Field(
        default=5.0, description="no answer this long after the end of speech: no_response"
    )
    barge_in: BargeInConfig | None = Field(
        default=None,
        description="interrupt some answers and time how long the agent takes "
        "to yield (absent: off)",
    )
    slo: VoiceSloConfig = Field(
        default=VoiceSloConfig(), description="thresholds; each is a histogram bucket boundary"
    )

    def _semantic_problems(self) -> list[Problem]:
        problems = super()._semantic_problems()
        if self.ephemeral_token is not None and (self.api_key or self.api_key_file):
            problems.append((("ephemeral_token",), "set an API key or a token, not both"))
        for clip_id, expectation in self.expect.items():
            if expectation is not None and expectation.tool not in (None, self.tool.name):
                problems.append(
                    (("expect", clip_id, "tool"), f"not the declared tool {self.tool.name!r}")
                )
        if self.barge_in is not None and self.barge_in.yield_timeout <= 0:
            problems.append((("barge_in", "yield_timeout"), "must be > 0"))
        if not problems:
            # Built and played once here so that a bad option or a missing clip is a
            # `probed check` error, not a 3 am surprise.
            from probed.voice.provider import check_voice_config

            problems.extend(check_voice_config(self))
        return problems

    @property
    def token(self) -> str | None:
        return None if self.ephemeral_token is None else self.ephemeral_token.get_secret_value()

    @property
    def adapter_label(self) -> str:
        return f"{self.adapter}/{self.end_of_speech}"

    def slo_thresholds(self) -> tuple[float, ...]:
        # The response first: it is the latency a person reads first (status page, demo table).
        return tuple(dict.fromkeys((self.slo.response, self.slo.tool_call, self.slo.final)))
