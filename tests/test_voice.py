"""Timing math of the voice core with injected instants: the playback clock and tool judging."""

from __future__ import annotations

import numpy as np

from probed.adapters.events import ToolCall
from probed.targets.voice_engine import tool_arguments
from probed.voice import Playback, ToolExpectation, judge

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
