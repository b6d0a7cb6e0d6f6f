"""Timing math of the voice core with injected instants: the playback clock and tool judging."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterable, Sequence

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from probed.adapters import OpenAIRealtimeAdapter, OpenAIRealtimeOptions
from probed.adapters.events import ToolCall
from probed.adapters.voice import canned_result
from probed.audio.chunks import prepare
from probed.audio.manifest import load_manifest
from probed.targets.voice_engine import tool_arguments
from probed.voice import BargeInResult, Conversation, Playback, ToolExpectation, TurnResult, judge
from probed.voice.conversation import pcm_rate
from probed.voice.record import VoiceRecorder
from tests.voice_helpers import CODE_TOOL, EXPECT_ADD

MS = 1_000_000


def pcm(silent_ms: int, loud_ms: int, rate: int = 24000) -> bytes:
    silence = np.zeros(rate * silent_ms // 1000, dtype=np.int16)
    tone = (8000 * np.sin(np.arange(rate * loud_ms // 1000) / 3)).astype(np.int16)
    return np.concatenate([silence, tone]).astype("<i2").tobytes()


def test_first_sound_is_on_the_playback_clock_not_the_arrival_clock() -> None:
    play = Playback(24000)
    # Three 100 ms chunks arrive 10 ms apart (10x real time): 250 ms of silence, then sound.
    assert play.add(pcm(100, 0), 1000 * MS) is None
    assert play.add(pcm(100, 0), 1010 * MS) is None
    sound = play.add(pcm(50, 50), 1020 * MS)
    # The third chunk plays after the first two (at 1200 ms), its sound 50 ms into it.
    assert sound == 1250 * MS
    assert play.first_arrival_ns == 1000 * MS and play.until_ns == 1300 * MS
    assert play.playing(1299 * MS) and not play.playing(1300 * MS)


def test_a_late_chunk_starts_when_it_arrives_and_stop_flushes() -> None:
    play = Playback(24000)
    play.add(pcm(100, 0), 0)
    # Arrives after the first has played out: a gap, the chunk plays from its arrival.
    assert play.add(pcm(0, 100), 500 * MS) == 500 * MS
    play.stop(520 * MS)
    assert play.until_ns == 520 * MS and not play.playing(520 * MS)


def test_silence_is_never_first_sound() -> None:
    play = Playback(24000)
    quiet = (np.ones(2400, dtype=np.int16) * 20).astype("<i2").tobytes()  # about -64 dBFS
    assert play.add(quiet, 0) is None and play.first_sound_ns is None


def test_tool_calls_are_judged_by_name_and_the_arguments_asked_for() -> None:
    expect = ToolExpectation("generate_code", {"operation": "add", "arity": 2})
    good = ToolCall("generate_code", "c", '{"operation": "Add", "arity": 2.0, "extra": 1}')
    assert judge(expect, [good]) == "ok"
    assert judge(expect, [ToolCall("generate_code", "c", '{"operation": "add"}')]) == "wrong"
    assert judge(expect, [ToolCall("other", "c", '{"operation": "add", "arity": 2}')]) == "wrong"
    assert judge(expect, [ToolCall("generate_code", "c", '{"operation": "add",')]) == "wrong"
    assert judge(expect, []) == "missing"
    assert judge(None, []) is None
    assert judge(None, [good]) == "wrong"


def test_emulator_derives_tool_arguments_from_the_words() -> None:
    props: dict[str, object] = {"operation": {}, "arity": {}}
    assert tool_arguments("create a function that adds two numbers", props) == {
        "operation": "add",
        "arity": 2,
    }
    assert tool_arguments("turn on the kitchen lights", props) is None


# -- the whole turn on an injected clock ----------------------------------------------------

CHUNK_NS = 20 * MS


class Clock:
    """Real time plus an offset the channel advances by 20 ms per audio chunk sent, so pacing
    is instant and injected arrival times are exact."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return time.perf_counter_ns() + self.offset


class ScriptedChannel:
    """Frames arrive `delay` ns after audio chunk k was sent."""

    def __init__(self, clock: Clock, script: dict[int, list[tuple[int, str]]]) -> None:
        self.clock = clock
        self.script = script
        self.inbox: asyncio.Queue[tuple[str | bytes, int]] = asyncio.Queue()
        self.audio_sent = 0
        self.other_sent: list[str] = []

    async def send(self, data: str | bytes) -> None:
        text = data if isinstance(data, str) else data.decode()
        if '"input_audio_buffer.append"' not in text:
            self.other_sent.append(text)
            return
        for delay, frame in self.script.get(self.audio_sent, []):
            self.inbox.put_nowait((frame, self.clock() + delay))
        self.audio_sent += 1
        self.clock.offset += CHUNK_NS
        await asyncio.sleep(0)

    async def recv(self) -> tuple[str | bytes, int]:
        return await self.inbox.get()


def delta(data: bytes) -> str:
    return json.dumps(
        {"type": "response.output_audio.delta", "delta": base64.b64encode(data).decode()}
    )


async def test_turn_latencies_come_from_the_chunk_holding_the_end_of_speech() -> None:
    adapter = OpenAIRealtimeAdapter(OpenAIRealtimeOptions(tools=(CODE_TOOL,)))
    audio = prepare(load_manifest().load("create_function", rate=24000), trailing=0.0)
    end = audio.end_chunk
    end_ms = audio.clip.speech_end * 1000 + 300  # the provider's VAD waited 300 ms
    function = {"type": "response.function_call_arguments.done", "name": "generate_code",
                "call_id": "c1", "arguments": '{"operation": "add", "arity": 2}'}  # fmt: skip
    script = {
        end: [
            (300 * MS, json.dumps({"type": "input_audio_buffer.speech_stopped",
                                   "audio_end_ms": end_ms, "item_id": "i1"})),
            (301 * MS, json.dumps({"type": "input_audio_buffer.committed", "item_id": "i1"})),
            (400 * MS, json.dumps({"type": "conversation.item.input_audio_transcription.completed",
                                   "item_id": "i1", "transcript": audio.clip.transcript})),
            (600 * MS, json.dumps(function)),
            # 100 ms of silence, then 100 ms of tone sent 10 ms later: heard at 900 ms.
            (800 * MS, delta(pcm(100, 0))),
            (810 * MS, delta(pcm(0, 100))),
            (900 * MS, json.dumps({"type": "response.done", "response": {"status": "completed"}})),
        ]
    }  # fmt: skip
    clock = Clock()
    channel = ScriptedChannel(clock, script)
    async with Conversation(channel, adapter, mode="vad", clock=clock) as conversation:
        r = await conversation.turn(audio, EXPECT_ADD)
    assert r.outcome == "ok" and r.wer == 0.0 and r.tool_result == "ok"
    assert r.provider_eos_s == pytest.approx(0.300, abs=0.002)
    assert r.provider_endpoint_s == pytest.approx(0.300, abs=0.001)
    assert r.stt_final_s == pytest.approx(0.400, abs=0.002)
    assert r.tool_call_s == pytest.approx(0.600, abs=0.002)
    assert r.response_s == pytest.approx(0.800, abs=0.002)
    assert r.turn_s == pytest.approx(0.900, abs=0.002)
    # The tool call was answered with its call id, and a reply was asked for.
    answers = [json.loads(m) for m in channel.other_sent]
    canned = json.dumps(canned_result(ToolCall("generate_code", "c1", "")))
    assert answers[0]["item"] == {"type": "function_call_output", "call_id": "c1", "output": canned}
    assert answers[1]["type"] == "response.create"


# -- recording ------------------------------------------------------------------------------


class Latency:
    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram

    def observe(self, start_ns: int, end_ns: int) -> bool:
        self.histogram.observe((end_ns - start_ns) / 1e9)
        return True


class PromFamilies:
    """The family factory's shape, on a real prometheus_client registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def latency(self, name: str, documentation: str, *, primary: bool = False) -> Latency:
        return Latency(Histogram(name, documentation, registry=self.registry))

    def counter(
        self, name: str, documentation: str, label: str | None = None, values: Iterable[str] = ()
    ) -> Counter:
        made = Counter(name, documentation, [label] if label else [], registry=self.registry)
        for value in values:
            made.labels(value)
        return made

    def histogram(self, name: str, documentation: str, buckets: Sequence[float]) -> Histogram:
        return Histogram(name, documentation, buckets=buckets, registry=self.registry)


def test_recorder_observes_each_milestone_from_the_end_of_speech() -> None:
    families = PromFamilies()
    recorder = VoiceRecorder(families)
    turn = TurnResult("c", "vad", outcome="ok", tool_result="wrong", provider_endpoint_s=0.3)
    turn.speech_end_sent_ns = 10 * MS
    turn.at_ns = {"stt_final": 410 * MS, "response": 810 * MS, "turn": 910 * MS}
    turn.at_ns["tool_call"] = 610 * MS
    recorder.turn(turn)
    barge = BargeInResult(first=turn, outcome="yielded", start_ns=0, yield_ns=90 * MS)
    recorder.barge_in(barge)
    value = families.registry.get_sample_value
    assert value("probe_voice_response_seconds_sum") == pytest.approx(1.6)  # two turns recorded
    assert value("probe_voice_turn_seconds_sum") == pytest.approx(1.8)
    assert value("probe_stt_final_seconds_sum") == pytest.approx(0.8)
    assert value("probe_voice_tool_call_seconds_sum") == pytest.approx(1.2)
    assert value("probe_voice_bargein_seconds_sum") == pytest.approx(0.09)
    assert value("probe_voice_tool_calls_total", {"result": "wrong"}) == 2
    assert value("probe_voice_tool_calls_total", {"result": "missing"}) == 0
    assert value("probe_voice_bargeins_total", {"result": "yielded"}) == 1
    assert value("probe_voice_bargeins_total", {"result": "never"}) == 0
    assert value("probe_voice_turns_total", {"result": "ok"}) == 2
    assert value("probe_voice_provider_endpoint_seconds_count") == 2
    assert value("probe_voice_provider_eos_seconds_count") == 0


def test_pcm_rate_comes_from_the_mime_type() -> None:
    assert pcm_rate("audio/pcm;rate=24000", 8000) == 24000
    assert pcm_rate("audio/pcm; rate=16000", 8000) == 16000
    assert pcm_rate("audio/pcm", 24000) == 24000
    assert pcm_rate("audio/mpeg", 24000) is None
