"""Turn and barge-in results into metric observations, through the probe's family factory.

Structural on purpose: any factory with `latency(name, doc, primary=)` (whose families take
`observe(start_ns, end_ns)` and withhold measurements taken while the loop lagged), `counter`
with one bounded label, and `histogram` fits; probed.metrics.ProbeMetrics is the one the daemon
passes. Names follow the metric contract (design.md section 4).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from probed.voice.conversation import (
    BARGE_IN_OUTCOMES,
    TURN_OUTCOMES,
    BargeInResult,
    TurnResult,
)
from probed.voice.tools import TOOL_RESULTS

# Seconds the provider's endpointer waited after the fixture's end of speech, on its own clock.
PROVIDER_ENDPOINT_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


class LatencyFamily(Protocol):
    def observe(self, start_ns: int, end_ns: int) -> bool: ...


class Child(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class CounterFamily(Protocol):
    def labels(self, *values: str) -> Child: ...


class HistogramFamily(Protocol):
    def observe(self, value: float) -> None: ...


class Families(Protocol):
    def latency(self, name: str, documentation: str, *, primary: bool = False) -> LatencyFamily: ...

    def counter(
        self, name: str, documentation: str, label: str | None = None, values: Iterable[str] = ()
    ) -> CounterFamily: ...

    def histogram(
        self, name: str, documentation: str, buckets: Sequence[float]
    ) -> HistogramFamily: ...


_LATENCIES = {
    "stt_final": ("probe_stt_final_seconds", "End of speech to the final user transcript."),
    "response": ("probe_voice_response_seconds", "End of speech to the first response audio."),
    "turn": (
        "probe_voice_turn_seconds",
        "End of speech to the first non-silent response audio on the probe's playback clock.",
    ),
    "tool_call": ("probe_voice_tool_call_seconds", "End of speech to the complete tool call."),
    "provider_eos": (
        "probe_voice_provider_eos_seconds",
        "End of speech to the provider's own end-of-speech event.",
    ),
}


class VoiceRecorder:
    def __init__(self, families: Families) -> None:
        self._latency = {
            key: families.latency(name, doc, primary=key == "response")
            for key, (name, doc) in _LATENCIES.items()
        }
        self._bargein = families.latency(
            "probe_voice_bargein_seconds",
            "Start of the user's interruption to the agent yielding.",
        )
        self._turns = families.counter(
            "probe_voice_turns_total", "Voice turns by outcome.", "result", TURN_OUTCOMES
        )
        self._tools = families.counter(
            "probe_voice_tool_calls_total",
            "Tool calls the fixtures asked for, by whether the agent made the right one.",
            "result",
            TOOL_RESULTS,
        )
        self._bargeins = families.counter(
            "probe_voice_bargeins_total",
            "Barge-ins by outcome (never: the agent talked on).",
            "result",
            BARGE_IN_OUTCOMES,
        )
        self._endpoint = families.histogram(
            "probe_voice_provider_endpoint_seconds",
            "The provider's own view: its end of speech minus the fixture's, on its audio clock.",
            PROVIDER_ENDPOINT_BUCKETS,
        )

    def turn(self, result: TurnResult) -> None:
        self._turns.labels(result.outcome).inc()
        if result.tool_result is not None:
            self._tools.labels(result.tool_result).inc()
        end = result.speech_end_sent_ns
        if end is not None:
            for key, at in result.at_ns.items():
                family = self._latency.get(key)
                if family is not None and at >= end:
                    family.observe(end, at)
        if result.provider_endpoint_s is not None and result.provider_endpoint_s >= 0:
            self._endpoint.observe(result.provider_endpoint_s)

    def barge_in(self, result: BargeInResult) -> None:
        self.turn(result.first)
        self._bargeins.labels(result.outcome).inc()
        if result.start_ns is not None and result.yield_ns is not None:
            self._bargein.observe(result.start_ns, result.yield_ns)
        if result.second is not None:
            self.turn(result.second)
