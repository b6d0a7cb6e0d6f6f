"""The STT emulators against the probe's own adapters and measurement core, over real sockets.

Most tests use fast mode (endpointing only, manifest transcripts); a few use the real recogniser.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from probed.connection import classify_closed
from probed.speech import Mode, UtteranceResult, keep_alive, run_utterance
from probed.targets.stt import PROTOCOLS, SttFaults, SttTarget
from tests.conftest import bound
from tests.targets.stt_client import adapter_for, audio, session

HAVE_SPHINX = importlib.util.find_spec("pocketsphinx") is not None


async def utterance(
    protocol: str,
    clip_id: str,
    mode: Mode = "vad",
    *,
    target: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    trailing: float = 1.0,
    **run: Any,
) -> tuple[UtteranceResult, SttTarget]:
    """One utterance over a fresh session to a fresh emulator (fast mode unless told)."""
    settings: dict[str, Any] = {"fast": True, **(target or {})}
    async with SttTarget(protocol, **settings) as emulator:  # type: ignore[arg-type]
        adapter = adapter_for(protocol, emulator.url, **(options or {}))
        async with session(adapter) as held:
            clip = audio(clip_id, adapter, trailing=trailing)
            return await run_utterance(held, adapter, clip, mode, **run), emulator


async def test_each_protocol_transcribes_a_fixture_in_vad_mode() -> None:
    runs = await asyncio.gather(
        *(utterance(p, "run_tests", target={"delay": 0.1, "endpointing": 0.3}) for p in PROTOCOLS)
    )
    for result, emulator in runs:
        assert result.outcome == "ok", result.describe()
        assert result.wer == 0.0
        assert result.first_partial_s is not None
        # Endpointing silence (0.3 s, Deepgram's from the adapter's query) plus the added
        # delay (0.1 s), measured from the end of speech.
        assert result.final_s is not None
        assert 0.3 <= result.final_s < 0.4 + bound(0.3)
        assert emulator.finals_sent == 1


async def test_flush_mode_latency_tracks_the_configured_delay() -> None:
    delays = (0.05, 0.35)
    runs = await asyncio.gather(
        *(
            utterance(p, "stop_music", "flush", target={"delay": d})
            for p in PROTOCOLS
            for d in delays
        )
    )
    finals = []
    for result, _ in runs:
        assert result.outcome == "ok", result.describe()
        assert result.final_s is not None
        finals.append(result.final_s)
    for fast, slow in zip(finals[::2], finals[1::2], strict=True):
        assert 0.05 <= fast < 0.05 + bound(0.25)
        assert slow - fast == pytest.approx(0.30, abs=bound(0.15))


async def test_a_held_session_carries_several_utterances_including_a_pause() -> None:
    async with SttTarget("deepgram", fast=True) as target:
        adapter = adapter_for("deepgram", target.url, endpointing_ms=300)
        async with session(adapter) as held:
            paused = await run_utterance(held, adapter, audio("timer_pause", adapter, 0.6))
            short = await run_utterance(held, adapter, audio("stop_music", adapter, 0.6))
    # The 0.4 s pause is longer than the 300 ms endpointing: the provider finalised mid-sentence.
    assert paused.early_finals, paused.describe()
    assert paused.outcome == "ok" and paused.wer == 0.0
    assert short.outcome == "ok" and short.final_text == "stop the music"
    assert target.sessions == 1


async def test_other_audio_framings_reach_the_emulator_intact() -> None:
    (mulaw, deepgram), (binary, _), (aai_mulaw, assemblyai) = await asyncio.gather(
        utterance("deepgram", "lights_on", "flush", options={"encoding": "mulaw",
                                                             "sample_rate": 8000}),
        utterance("generic", "lights_on", "flush", options={"audio": "binary"}),
        utterance("assemblyai", "lights_on", "flush", options={"encoding": "mulaw",
                                                               "sample_rate": 8000}),
    )  # fmt: skip
    assert deepgram.last_query["encoding"] == "mulaw"
    assert assemblyai.last_query["encoding"] == "pcm_mulaw"
    for result in (mulaw, binary, aai_mulaw):
        assert result.outcome == "ok", result.describe()


@pytest.mark.skipif(not HAVE_SPHINX, reason="pocketsphinx not installed")
async def test_the_real_recogniser_transcribes_speech() -> None:
    async with SttTarget("assemblyai", delay=0.1) as target:
        adapter = adapter_for("assemblyai", target.url)
        async with session(adapter) as held:
            result = await run_utterance(
                held, adapter, audio("lights_on", adapter), "flush", final_timeout=bound(5)
            )
    assert result.outcome == "ok", result.describe()
    assert result.wer is not None and result.wer <= 0.2
    assert result.final_s is not None and result.final_s >= 0.1
    assert result.revised_s is not None  # format_turns: the formatted copy followed


async def test_close_code_faults_end_the_utterance_as_disconnected() -> None:
    codes = (1007, 1008, 1011)
    runs = await asyncio.gather(
        *(
            utterance("deepgram", "stop_music", "flush", target={"faults": SttFaults(close_code=c)})
            for c in codes
        )
    )
    for code, (result, _) in zip(codes, runs, strict=True):
        assert result.outcome == "disconnected"
        assert isinstance(result.transport_error, ConnectionClosed)
        assert classify_closed(result.transport_error) == ("server_close", code)


async def test_turn_faults_are_typed() -> None:
    cases = [
        (SttFaults(error_frame=True), "error", 0),
        (SttFaults(never_finalise=True), "timeout", 0),
        (SttFaults(finalise_twice=True), "ok", 1),
    ]
    runs = await asyncio.gather(
        *(
            utterance(p, "stop_music", "flush", target={"faults": faults}, trailing=0.2,
                      final_timeout=0.5, linger=0.3)
            for p in PROTOCOLS
            for faults, _, _ in cases
        )
    )  # fmt: skip
    expected = [(outcome, dups) for _ in PROTOCOLS for _, outcome, dups in cases]
    for (result, _), (outcome, duplicates) in zip(runs, expected, strict=True):
        assert result.outcome == outcome, result.describe()
        assert result.duplicate_finals == duplicates


async def test_assemblyai_session_limit_closes_with_3008() -> None:
    async with SttTarget("assemblyai", fast=True, session_limit=0.3) as target:
        adapter = adapter_for("assemblyai", target.url)
        async with session(adapter) as held:
            result = await run_utterance(held, adapter, audio("stop_music", adapter))
    assert result.outcome in ("error", "disconnected")
    assert [e.code for e in result.provider_errors] == ["3008"]
    if result.outcome == "disconnected":
        assert isinstance(result.transport_error, ConnectionClosed)
        assert classify_closed(result.transport_error) == ("server_close", 3008)


async def test_wire_details_of_the_deepgram_emulator() -> None:
    async with SttTarget("deepgram", fast=True, api_key="k") as target:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(target.url):
                pass
        assert refused.value.response.status_code == 401
        headers = {"Authorization": "Token k"}
        with pytest.raises(InvalidStatus) as bad:
            async with connect(f"{target.url}?encoding=linear16", additional_headers=headers):
                pass
        assert bad.value.response.status_code == 400
        async with connect(target.url, additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "Finalize"}))
            empty = json.loads(await ws.recv())
            assert empty["type"] == "Results" and empty["from_finalize"] is True
            await ws.send(json.dumps({"type": "CloseStream"}))
            assert json.loads(await ws.recv())["type"] == "Metadata"
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


async def test_deepgram_close_stream_sends_pending_finals_before_metadata() -> None:
    async with SttTarget("deepgram", fast=True, delay=0.2) as target:
        adapter = adapter_for("deepgram", target.url)
        clip = audio("stop_music", adapter, trailing=0)
        async with connect(adapter.connect_request().url) as ws:
            for chunk in clip.speech_chunks:
                await ws.send(chunk)
            await ws.send(json.dumps({"type": "Finalize"}))
            await ws.send(json.dumps({"type": "CloseStream"}))
            kinds = []
            with pytest.raises(ConnectionClosed):
                while True:
                    message = json.loads(await ws.recv())
                    kinds.append((message["type"], message.get("from_finalize")))
    assert kinds[-2:] == [("Results", True), ("Metadata", None)]


async def test_deepgram_idle_streams_close_unless_kept_alive() -> None:
    async with SttTarget("deepgram", fast=True, deepgram_idle=0.3) as target:
        idle_adapter = adapter_for("deepgram", target.url)
        kept_adapter = adapter_for("deepgram", target.url)
        kept_adapter.keepalive_interval = 0.1
        async with session(idle_adapter) as idle, session(kept_adapter) as kept:
            keeper = asyncio.create_task(keep_alive(kept, kept_adapter))
            with pytest.raises(ConnectionClosed) as closed:
                await idle.recv()
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "NET-0001")
            # Still open three idle periods later: the keepalives reset the timer.
            await asyncio.sleep(0.9)
            assert kept.ws.close_code is None
            keeper.cancel()
            result = await run_utterance(
                kept, kept_adapter, audio("stop_music", kept_adapter), "flush"
            )
            assert result.outcome == "ok"


async def test_wire_details_of_the_assemblyai_emulator() -> None:
    async with SttTarget("assemblyai", fast=True) as target:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(target.url):
                pass
        assert refused.value.response.status_code == 400  # no speech_model
        async with connect(f"{target.url}?speech_model=universal-streaming-english") as ws:
            begin = json.loads(await ws.recv())
            assert begin["type"] == "Begin" and begin["expires_at"] > 0
            await ws.send(json.dumps({"type": "Terminate"}))
            assert json.loads(await ws.recv())["type"] == "Termination"
            with pytest.raises(ConnectionClosed):
                await ws.recv()
        async with connect(f"{target.url}?speech_model=x") as ws:
            await ws.recv()
            await ws.send("{not json")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4100
        # inactivity_timeout is in seconds: nothing sent for that long ends the session.
        async with connect(f"{target.url}?speech_model=x&inactivity_timeout=0.2") as ws:
            await ws.recv()
            error = json.loads(await ws.recv())
            assert error == {"type": "Error", "error_code": 4031, "error": "Session idle too long"}
            with pytest.raises(ConnectionClosed) as idle:
                await ws.recv()
            assert idle.value.rcvd is not None and idle.value.rcvd.code == 4031


def test_cli_arguments_build_the_target() -> None:
    from probed.cli import build_parser
    from probed.targets import stt

    argv = ["target", "stt", "--protocol", "assemblyai", "--fast", "--delay", "0.2",
            "--close-code", "1011"]  # fmt: skip
    args = build_parser(argv).parse_args(argv)
    assert args.serve is stt.serve
    assert (args.protocol, args.fast, args.delay, args.close_code) == (
        "assemblyai",
        True,
        0.2,
        1011,
    )
    with pytest.raises(ValueError, match="cannot be sent"):
        SttFaults(close_code=1006)
