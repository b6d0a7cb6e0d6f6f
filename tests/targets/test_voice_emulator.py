"""The voice probe core against the Gemini Live and OpenAI Realtime emulators, over real
WebSocket connections: latencies track the configured delays, tool calls are judged, barge-in
is timed (and an agent that never yields is counted), go-away and resumption lose nothing."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest

from probed.adapters import OpenAIRealtimeAdapter, OpenAIRealtimeOptions, VoiceAdapter
from probed.speech.session import SetupError, open_session
from probed.targets.voice import Protocol as Proto
from probed.targets.voice import ToolFault, VoiceBehaviour, VoiceTarget
from probed.voice import BargeInResult, Conversation, TurnResult
from probed.voice.channel import WsChannel
from tests.voice_helpers import EXPECT_ADD, adapter_for, clip

PROTOCOLS = ["gemini", "openai"]
# Generous: the machine is shared and noisy; the checks are on differences and bounds.
SLACK = 0.25


async def flush_turns(
    protocol: Proto, behaviour: VoiceBehaviour, clip_ids: tuple[str, ...]
) -> list[TurnResult]:
    """One session in flush mode (manual commit / activity end): one turn per clip."""
    results = []
    async with VoiceTarget(protocol, behaviour=behaviour) as target:
        adapter = adapter_for(protocol, target.url, manual=True)
        async with WsChannel(adapter.connect_request()) as channel:
            await open_session(channel, adapter)
            async with Conversation(channel, adapter, mode="flush") as conversation:
                for clip_id in clip_ids:
                    expect = EXPECT_ADD if clip_id == "create_function" else None
                    audio = clip(clip_id, adapter.sample_rate)
                    results.append(await conversation.turn(audio, expect))
    return results


def base_and_spread(values: list[float]) -> tuple[float, float]:
    return round(statistics.median(values), 3), round(max(values) - min(values), 3)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_response_and_tool_call_latencies_track_the_configured_delay(protocol: Proto) -> None:
    delays = (0.1, 0.4)
    clip_ids = ("create_function", "stop_music", "run_tests")
    # Independent sessions, run side by side: the waiting is real-time audio, not CPU.
    plan = [(d, c) for d in delays for c in clip_ids]
    runs = await asyncio.gather(*(
        flush_turns(protocol, VoiceBehaviour(delay=d, answer_seconds=0.3), (c,)) for d, c in plan
    ))  # fmt: skip
    excess: dict[str, list[float]] = {"tool_call": [], "response": [], "turn": [], "stt": []}
    for (delay, _clip_id), results in zip(plan, runs, strict=True):
        for r in results:
            assert r.outcome == "ok", r.describe()
            assert r.stt_final_s is not None and r.wer == 0.0
            assert r.response_s is not None and r.turn_s is not None
            # The answer leads with 100 ms of silence: heard later than it arrived.
            assert r.turn_s - r.response_s == pytest.approx(0.1, abs=0.05)
            if r.clip_id == "create_function":
                assert r.tool_result == "ok" and r.tool_call_s is not None
                excess["tool_call"].append(r.tool_call_s - delay)
            else:
                assert r.tool_result is None and not r.tool_calls
                excess["response"].append(r.response_s - delay)
                excess["turn"].append(r.turn_s - delay - 0.1)
            excess["stt"].append(r.stt_final_s)
    for what, values in excess.items():
        assert all(0.0 <= v <= SLACK for v in values), (what, values)
    print(protocol, "measured minus configured (base, spread):",
          {k: base_and_spread(v) for k, v in excess.items()})  # fmt: skip


async def vad_turn(protocol: Proto, variant: str) -> TurnResult:
    behaviour = VoiceBehaviour(delay=0.2, answer_seconds=0.4)
    text_frames = variant == "text"
    async with VoiceTarget(protocol, behaviour=behaviour, text_frames=text_frames) as target:
        if variant == "beta":
            adapter: VoiceAdapter = OpenAIRealtimeAdapter(
                OpenAIRealtimeOptions(url=target.url, beta=True, silence_duration_ms=300)
            )
        else:
            adapter = adapter_for(protocol, target.url)
        async with WsChannel(adapter.connect_request()) as channel:
            await open_session(channel, adapter)
            async with Conversation(channel, adapter, mode="vad") as conversation:
                return await conversation.turn(clip("lights_on", adapter.sample_rate))


async def test_server_vad_turns_and_the_provider_view() -> None:
    """Gemini with JSON in binary and in text frames, OpenAI with GA and beta event names."""
    variants: list[tuple[Proto, str]] = [
        ("gemini", "binary"), ("gemini", "text"), ("openai", "ga"), ("openai", "beta"),
    ]  # fmt: skip
    results = await asyncio.gather(*(vad_turn(p, v) for p, v in variants))
    for (protocol, variant), r in zip(variants, results, strict=True):
        assert r.outcome == "ok" and r.stt_text == "turn on the kitchen lights", variant
        assert r.response_s is not None and r.unexpected_audio == 0
        # Endpointing silence (300 ms) plus the configured delay.
        assert 0.45 <= r.response_s <= 0.5 + SLACK, (variant, r.response_s)
        if protocol == "openai":
            # OpenAI's own view: its end of speech is 300 ms of silence after the fixture's.
            assert r.provider_endpoint_s == pytest.approx(0.3, abs=0.03)
            assert r.provider_eos_s is not None and r.provider_eos_s < r.response_s


async def barge(protocol: Proto, yield_delay: float | None) -> BargeInResult:
    behaviour = VoiceBehaviour(delay=0.1, answer_seconds=1.2, yield_delay=yield_delay)
    async with VoiceTarget(protocol, behaviour=behaviour) as target:
        adapter = adapter_for(protocol, target.url)
        async with WsChannel(adapter.connect_request()) as channel:
            await open_session(channel, adapter)
            async with Conversation(channel, adapter, mode="vad") as conversation:
                return await conversation.barge_in(
                    clip("stop_music", adapter.sample_rate),
                    clip("run_tests", adapter.sample_rate),
                    after=0.2,
                    yield_timeout=0.8,
                )


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_barge_in_tracks_the_yield_delay_and_never_yield_is_counted(protocol: Proto) -> None:
    yields = (0.05, 0.05, 0.3, 0.3, None)
    results = await asyncio.gather(*(barge(protocol, y) for y in yields))
    excess = []
    for yield_delay, b in zip(yields, results, strict=True):
        # The interruption is itself a turn, answered once the agent has stopped.
        assert b.second is not None and b.second.outcome == "ok", b.second
        assert b.second.stt_text == "run the tests"
        if yield_delay is None:
            assert b.outcome == "never" and b.bargein_s is None
            continue
        assert b.outcome == "yielded" and b.yielded_by == "event", b
        assert b.bargein_s is not None
        excess.append(b.bargein_s - yield_delay)
        if protocol == "openai":
            assert b.provider_heard_s is not None and b.provider_heard_s < b.bargein_s
    assert all(0.0 <= e <= SLACK for e in excess), excess
    print(protocol, "barge-in minus yield delay (base, spread):", base_and_spread(excess))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_wrong_and_missing_tool_calls_are_counted(protocol: Proto) -> None:
    faults: tuple[ToolFault, ...] = ("wrong_name", "bad_args", "missing")
    runs = await asyncio.gather(*(
        flush_turns(protocol, VoiceBehaviour(delay=0.05, answer_seconds=0.2, tool_fault=f),
                    ("create_function",))
        for f in faults
    ))  # fmt: skip
    seen = {fault: results[0].tool_result for fault, results in zip(faults, runs, strict=True)}
    assert seen == {"wrong_name": "wrong", "bad_args": "wrong", "missing": "missing"}
    # The session goes on: the answer still came.
    assert all(results[0].outcome == "ok" for results in runs)


async def test_go_away_resumption_keeps_the_turn_in_flight_and_is_timed() -> None:
    # The go-away comes 1 s into each connection, in the middle of its first turn; the
    # connection closes 2.5 s later, after that turn is over.
    behaviour = VoiceBehaviour(delay=0.1, answer_seconds=0.3, session_limit=3.5, go_away_lead=2.5)
    drains: list[float] = []
    reconnects: list[float] = []
    turns: list[TurnResult] = []
    async with VoiceTarget("gemini", behaviour=behaviour) as target:
        adapter = adapter_for("gemini", target.url, manual=True)
        handle: str | None = None
        closed_ns = 0
        for _connection in range(3):
            adapter.resume_with(handle)
            async with WsChannel(adapter.connect_request()) as channel:
                await open_session(channel, adapter)
                if handle is not None:
                    reconnects.append((time.perf_counter_ns() - closed_ns) / 1e9)
                async with Conversation(channel, adapter, mode="flush") as conversation:
                    r = await conversation.turn(clip("lights_on", adapter.sample_rate))
                    turns.append(r)
                    assert conversation.go_away is not None and conversation.go_away_ns is not None
                    assert r.speech_start_sent_ns is not None
                    # In flight: the go-away came while the turn was being measured.
                    assert any(what.startswith("GoAway") for _at, what in r.timeline)
                    assert conversation.go_away.time_left == 2.5
                    drains.append((time.perf_counter_ns() - conversation.go_away_ns) / 1e9)
                    handle = conversation.resume_handle
                    assert handle is not None
            closed_ns = time.perf_counter_ns()
        assert target.counters.go_aways == 3 and target.counters.resumed == 2
    # Every turn was measured whole, although each one had a go-away in the middle.
    assert all(t.outcome == "ok" and t.stt_text == "turn on the kitchen lights" for t in turns)
    assert max(reconnects) < 1.0 and max(drains) < 2.5
    print("go-away to drained", [round(x, 3) for x in drains],
          "closed to resumed (setupComplete)", [round(x, 3) for x in reconnects])  # fmt: skip


async def test_a_session_limit_without_go_away_is_a_disconnect() -> None:
    from websockets.exceptions import ConnectionClosed

    behaviour = VoiceBehaviour(session_limit=1.0, go_away=False)
    async with VoiceTarget("gemini", behaviour=behaviour) as target:
        adapter = adapter_for("gemini", target.url)
        async with WsChannel(adapter.connect_request()) as channel:
            await open_session(channel, adapter)
            async with Conversation(channel, adapter, mode="vad") as conversation:
                r = await conversation.turn(clip("lights_on", adapter.sample_rate))
                assert conversation.go_away is None
    assert r.outcome == "disconnected"
    assert isinstance(r.transport_error, ConnectionClosed)
    assert r.transport_error.rcvd is not None and r.transport_error.rcvd.code == 1011


async def test_resumption_with_an_unknown_handle_is_refused_and_typed() -> None:
    async with VoiceTarget("gemini") as target:
        adapter = adapter_for("gemini", target.url)
        adapter.resume_with("h_forged")
        async with WsChannel(adapter.connect_request()) as channel:
            with pytest.raises(Exception) as caught:
                await open_session(channel, adapter)
            assert not isinstance(caught.value, SetupError) or caught.value.reason
        assert target.counters.refused == 1


async def test_openai_rejects_a_bad_key_at_the_upgrade_and_gemini_after_it() -> None:
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    async with VoiceTarget("openai", api_key="right") as target:
        with pytest.raises(InvalidStatus):
            async with WsChannel(adapter_for("openai", target.url).connect_request()):
                pass
    async with (
        VoiceTarget("gemini", api_key="right") as target,
        WsChannel(adapter_for("gemini", target.url).connect_request()) as channel,
    ):
        with pytest.raises(ConnectionClosed) as closed:
            await open_session(channel, adapter_for("gemini", target.url))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_the_real_recogniser_hears_the_request_and_the_tool_is_called() -> None:
    from probed.targets.voice_engine import SphinxRecogniser

    sphinx = SphinxRecogniser()
    try:
        await sphinx.warm_up()
        # The delay exceeds pocketsphinx's decoding time, so the answer still leaves on time.
        behaviour = VoiceBehaviour(delay=1.5, answer_seconds=0.2)
        async with VoiceTarget("gemini", behaviour=behaviour, recogniser=sphinx) as target:
            adapter = adapter_for("gemini", target.url)
            async with WsChannel(adapter.connect_request()) as channel:
                await open_session(channel, adapter)
                async with Conversation(channel, adapter, mode="vad") as conversation:
                    audio = clip("create_function", adapter.sample_rate)
                    r = await conversation.turn(audio, EXPECT_ADD)
    finally:
        sphinx.close()
    assert r.stt_text is not None and r.stt_text.startswith("create a function")
    assert r.tool_result == "ok", r.tool_calls
    assert r.tool_call_s is not None and r.tool_call_s >= 1.5
    print("pocketsphinx heard", repr(r.stt_text), "tool call", round(r.tool_call_s, 3))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_model_that_never_answers_is_counted_as_no_response(
    protocol: Proto,
) -> None:
    async with VoiceTarget(protocol, behaviour=VoiceBehaviour(mute=True)) as target:
        adapter = adapter_for(protocol, target.url, manual=True)
        async with WsChannel(adapter.connect_request()) as channel:
            await open_session(channel, adapter)
            async with Conversation(channel, adapter, mode="flush") as conversation:
                audio = clip("stop_music", adapter.sample_rate)
                r = await conversation.turn(audio, answer_timeout=0.8)
    assert r.outcome == "no_response" and r.response_s is None
    # It still heard: the transcript came.
    assert r.stt_text == "stop the music"


async def test_a_rejected_setup_is_a_close_with_its_code() -> None:
    from websockets.exceptions import ConnectionClosed

    from probed.adapters import GeminiLiveAdapter, GeminiLiveOptions

    async with VoiceTarget("gemini") as target:
        # A Vertex-style path that is not one: the emulator refuses the model like Gemini does.
        adapter = GeminiLiveAdapter(GeminiLiveOptions(url=target.url, model="publishers/x"))
        async with WsChannel(adapter.connect_request()) as channel:
            with pytest.raises(ConnectionClosed) as closed:
                await open_session(channel, adapter)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
