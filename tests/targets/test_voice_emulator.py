"""The voice probe core against the Gemini Live and OpenAI Realtime emulators, over real
WebSocket connections: latencies track the configured delays, tool calls are judged, barge-in
is timed (and an agent that never yields is counted), go-away and resumption lose nothing."""

from __future__ import annotations

import asyncio

import pytest

from probed.speech.session import SetupError, open_session
from probed.targets.voice import Protocol as Proto
from probed.targets.voice import VoiceBehaviour, VoiceTarget
from probed.voice import Conversation
from probed.voice.channel import WsChannel
from tests.voice_helpers import EXPECT_ADD, adapter_for, clip

PROTOCOLS = ["gemini", "openai"]
# Generous: the machine is shared and noisy; the checks are on differences and bounds.
SLACK = 0.25


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_response_and_tool_call_latencies_track_the_configured_delay(protocol: Proto) -> None:
    figures: dict[float, list[tuple[float, float, float]]] = {}
    for delay in (0.1, 0.4):
        behaviour = VoiceBehaviour(delay=delay, answer_seconds=0.4)
        async with VoiceTarget(protocol, behaviour=behaviour) as target:
            adapter = adapter_for(protocol, target.url, manual=True)
            async with WsChannel(adapter.connect_request()) as channel:
                await open_session(channel, adapter)
                async with Conversation(channel, adapter, mode="flush") as conversation:
                    for clip_id in ("create_function", "lights_on"):
                        expect = EXPECT_ADD if clip_id == "create_function" else None
                        r = await conversation.turn(clip(clip_id, adapter.sample_rate), expect)
                        assert r.outcome == "ok", r.describe()
                        assert r.stt_final_s is not None and r.wer == 0.0
                        assert r.response_s is not None and r.turn_s is not None
                        # The answer leads with 100 ms of silence: heard later than it arrived.
                        assert r.turn_s - r.response_s == pytest.approx(0.1, abs=0.05)
                        if expect is not None:
                            assert r.tool_result == "ok" and r.tool_call_s is not None
                            figures.setdefault(delay, []).append(
                                (r.tool_call_s, r.response_s, r.stt_final_s)
                            )
                        else:
                            assert r.tool_result is None and not r.tool_calls
                            figures.setdefault(delay, []).append(
                                (r.response_s, r.response_s, r.stt_final_s)
                            )
    for delay, rows in figures.items():
        for latency, _response, _stt in rows:
            assert delay <= latency <= delay + SLACK, (delay, rows)
    print(
        protocol,
        {d: [tuple(round(x, 3) for x in row) for row in rows] for d, rows in figures.items()},
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_server_vad_turn_and_the_provider_view(protocol: Proto) -> None:
    async with VoiceTarget(
        protocol, behaviour=VoiceBehaviour(delay=0.2, answer_seconds=0.4)
    ) as target:
        adapter = adapter_for(protocol, target.url)
        async with WsChannel(adapter.connect_request()) as channel:
            await open_session(channel, adapter)
            async with Conversation(channel, adapter, mode="vad") as conversation:
                r = await conversation.turn(clip("weather_question", adapter.sample_rate))
    assert r.outcome == "ok" and r.stt_text == "what is the weather like in london tomorrow"
    assert r.response_s is not None
    # Endpointing silence (300 ms) plus the configured delay.
    assert 0.45 <= r.response_s <= 0.5 + SLACK
    if protocol == "openai":
        # OpenAI's own view: its end of speech is 300 ms of silence after the fixture's.
        assert r.provider_endpoint_s == pytest.approx(0.3, abs=0.03)
        assert r.provider_eos_s is not None and r.provider_eos_s < r.response_s


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_barge_in_tracks_the_yield_delay_and_never_yield_is_counted(protocol: Proto) -> None:
    results: dict[float | None, list[float | None]] = {}
    outcomes: dict[float | None, list[str]] = {}
    for yield_delay in (0.05, 0.3, None):
        behaviour = VoiceBehaviour(delay=0.1, answer_seconds=1.2, yield_delay=yield_delay)
        async with VoiceTarget(protocol, behaviour=behaviour) as target:
            adapter = adapter_for(protocol, target.url)
            async with WsChannel(adapter.connect_request()) as channel:
                await open_session(channel, adapter)
                async with Conversation(channel, adapter, mode="vad") as conversation:
                    b = await conversation.barge_in(
                        clip("lights_on", adapter.sample_rate),
                        clip("stop_music", adapter.sample_rate),
                        after=0.2,
                        yield_timeout=0.8,
                    )
        results.setdefault(yield_delay, []).append(b.bargein_s)
        outcomes.setdefault(yield_delay, []).append(b.outcome)
        assert b.second is not None and b.second.outcome == "ok"
        assert b.second.stt_text == "stop the music"
    assert outcomes[None] == ["never"] and results[None] == [None]
    for yield_delay in (0.05, 0.3):
        assert outcomes[yield_delay] == ["yielded"]
        [seconds] = results[yield_delay]
        assert seconds is not None and yield_delay <= seconds <= yield_delay + SLACK
    print(protocol, "barge-in", results)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_wrong_and_missing_tool_calls_are_counted(protocol: Proto) -> None:
    seen: dict[str, str | None] = {}
    for fault in ("wrong_name", "bad_args", "missing"):
        behaviour = VoiceBehaviour(delay=0.05, answer_seconds=0.2, tool_fault=fault)
        async with VoiceTarget(protocol, behaviour=behaviour) as target:
            adapter = adapter_for(protocol, target.url, manual=True)
            async with WsChannel(adapter.connect_request()) as channel:
                await open_session(channel, adapter)
                async with Conversation(channel, adapter, mode="flush") as conversation:
                    audio = clip("create_function", adapter.sample_rate)
                    r = await conversation.turn(audio, EXPECT_ADD)
        assert r.outcome == "ok"  # the session goes on: the answer still came
        seen[fault] = r.tool_result
    assert seen == {"wrong_name": "wrong", "bad_args": "wrong", "missing": "missing"}


async def test_go_away_resumption_keeps_the_turn_in_flight_and_is_timed() -> None:
    behaviour = VoiceBehaviour(delay=0.1, answer_seconds=0.3, session_limit=2.5, go_away_lead=1.5)
    resumptions: list[float] = []
    turns = []
    async with VoiceTarget("gemini", behaviour=behaviour) as target:
        adapter = adapter_for("gemini", target.url, manual=True)
        handle: str | None = None
        went = 0.0
        for _connection in range(3):
            adapter.resume_with(handle)
            async with WsChannel(adapter.connect_request()) as channel:
                await open_session(channel, adapter)
                if handle is not None:
                    resumptions.append(asyncio.get_running_loop().time() - went)
                async with Conversation(channel, adapter, mode="flush") as conversation:
                    while conversation.go_away is None:
                        r = await conversation.turn(clip("lights_on", adapter.sample_rate))
                        turns.append(r)
                    handle = conversation.resume_handle
                    went = asyncio.get_running_loop().time()
                    assert handle is not None
        assert target.counters.go_aways == 3 and target.counters.resumed == 2
    # Every turn was measured whole, including those in flight when the go-away came.
    assert all(t.outcome == "ok" and t.stt_text == "turn on the kitchen lights" for t in turns)
    assert len(turns) >= 3 and max(resumptions) < 1.0
    print("resumption seconds", [round(x, 3) for x in resumptions], "turns", len(turns))


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
