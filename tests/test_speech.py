"""The speech measurement core, without sockets: a scripted channel injects arrival times."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from probed.adapters import AssemblyAIAdapter, AssemblyAIOptions, DeepgramAdapter
from probed.audio import AudioError, load_manifest, prepare
from probed.speech import (
    load_utterances,
    partial_matches,
    run_utterance,
    word_error_ratio,
    words,
)

CHUNK_NS = 20_000_000
MS = 1_000_000


class Clock:
    """Real time plus an offset that the channel advances as audio is sent.

    Each chunk "takes" its 20 ms on this clock without the test sleeping for it, so pacing is
    instant and the injected arrival times are exact.
    """

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return time.perf_counter_ns() + self.offset


Script = dict[int | str, list[tuple[int, str | bytes]]]


class ScriptedChannel:
    """Frames arrive `delay` ns after audio chunk k (or the flush, key "flush") was sent."""

    def __init__(self, clock: Clock, script: Script, close_after: int | None = None) -> None:
        self.clock = clock
        self.script = script
        self.inbox: asyncio.Queue[tuple[str | bytes, int] | None] = asyncio.Queue()
        self.audio_sent = 0
        self.text_sent: list[str] = []
        self.close_after = close_after

    def _deliver(self, key: int | str) -> None:
        for delay, frame in self.script.get(key, []):
            self.inbox.put_nowait((frame, self.clock() + delay))

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            index = self.audio_sent
            self.audio_sent += 1
            self._deliver(index)
            self.clock.offset += CHUNK_NS
            # A real socket write lets the reader run between chunks; so does this one.
            await asyncio.sleep(0)
            if self.close_after is not None and index == self.close_after:
                self.inbox.put_nowait(None)
        else:
            self.text_sent.append(data)
            self._deliver("flush")

    async def recv(self) -> tuple[str | bytes, int]:
        item = await self.inbox.get()
        if item is None:
            raise ConnectionResetError("peer went away")
        return item


def results(text: str, *, final: bool = False, speech_final: bool = False) -> str:
    return json.dumps(
        {
            "type": "Results",
            "is_final": final,
            "speech_final": speech_final,
            "from_finalize": False,
            "channel": {"alternatives": [{"transcript": text}]},
        }
    )


CLIP = load_manifest().load("create_function")
AUDIO = prepare(CLIP, chunk_ms=20, trailing=1.0)
START, END = AUDIO.start_chunk, AUDIO.end_chunk


async def test_latencies_come_from_the_chunks_holding_speech_start_and_end() -> None:
    clock = Clock()
    channel = ScriptedChannel(
        clock,
        {
            START + 5: [(30 * MS, results("delete everything"))],  # an early wrong guess
            START + 10: [(40 * MS, results("create a"))],
            END: [
                (
                    150 * MS,
                    results(
                        "create a function that adds two numbers", final=True, speech_final=True
                    ),
                )
            ],
        },
    )
    lags: list[float] = []
    result = await run_utterance(
        channel, DeepgramAdapter(), AUDIO, "vad", clock=clock, linger=0.05, on_lateness=lags.append
    )
    assert result.outcome == "ok"
    assert result.final_s == pytest.approx(0.150, abs=0.002)
    # The matching partial came 10 chunks + 40 ms after the speech-start chunk was sent.
    assert result.first_partial_s == pytest.approx(0.240, abs=0.002)
    assert result.wer == 0.0 and result.final_rule == "speech_final"
    # The trailing silence stopped once the final was in.
    assert END < channel.audio_sent < len(AUDIO.chunks)
    assert len(result.send_lag) == len(lags) == channel.audio_sent
    assert any("speech end sent" in line for line in result.describe())


async def test_flush_mode_sends_the_finalize_right_after_the_end_of_speech() -> None:
    clock = Clock()
    final = results("create a function that adds two numbers", final=True)
    from_finalize = json.loads(final) | {"from_finalize": True}
    channel = ScriptedChannel(clock, {"flush": [(80 * MS, json.dumps(from_finalize))]})
    result = await run_utterance(channel, DeepgramAdapter(), AUDIO, "flush", clock=clock, linger=0)
    assert channel.audio_sent == END + 1
    assert channel.text_sent == ['{"type": "Finalize"}']
    assert result.outcome == "ok" and result.final_rule == "from_finalize"
    # Measured from the end-of-speech chunk, which took its 20 ms before the flush went out.
    assert result.final_s == pytest.approx(0.100, abs=0.002)


async def test_a_final_before_the_end_of_speech_is_part_of_the_transcript() -> None:
    clock = Clock()
    channel = ScriptedChannel(
        clock,
        {
            START + 30: [(10 * MS, results("create a function", final=True, speech_final=True))],
            END: [(200 * MS, results("that adds two numbers", final=True, speech_final=True))],
        },
    )
    result = await run_utterance(channel, DeepgramAdapter(), AUDIO, clock=clock, linger=0)
    assert result.early_finals == ["create a function"]
    assert result.final_text == "create a function that adds two numbers"
    assert result.outcome == "ok"
    assert result.final_s == pytest.approx(0.200, abs=0.002)


async def test_duplicate_finals_are_counted_and_revisions_are_not() -> None:
    def turn(text: str, formatted: bool) -> str:
        return json.dumps({"type": "Turn", "turn_order": 3, "transcript": text,
                           "end_of_turn": True, "turn_is_formatted": formatted})  # fmt: skip

    text = "create a function that adds two numbers"
    clock = Clock()
    channel = ScriptedChannel(
        clock,
        {END: [(50 * MS, turn(text, False)), (90 * MS, turn(text.title() + ".", True)),
               (120 * MS, turn(text, False))]},
    )  # fmt: skip
    result = await run_utterance(channel, AssemblyAIAdapter(), AUDIO, clock=clock, linger=0.3)
    assert result.final_s == pytest.approx(0.050, abs=0.002)
    assert result.revised_s == pytest.approx(0.090, abs=0.002)
    assert result.duplicate_finals == 1
    assert result.outcome == "ok"


@pytest.mark.parametrize(
    ("script_end", "outcome"),
    [
        ([], "timeout"),
        ([(10 * MS, '{"type":"Error","description":"no","err_code":"X"}')], "error"),
        ([(10 * MS, results("   ", final=True, speech_final=True))], "timeout"),
        ([(10 * MS, results("turn off the oven now", final=True, speech_final=True))], "mismatch"),
    ],
)
async def test_outcomes(script_end: list[tuple[int, str | bytes]], outcome: str) -> None:
    clock = Clock()
    channel = ScriptedChannel(clock, {END: script_end})
    result = await run_utterance(
        channel, DeepgramAdapter(), AUDIO, "flush", clock=clock, final_timeout=0.2, linger=0
    )
    assert result.outcome == outcome
    assert result.final_s is None or outcome == "mismatch"


async def test_an_empty_final_is_empty() -> None:
    clock = Clock()
    assembly_empty = json.dumps({"type": "Turn", "turn_order": 0, "transcript": "",
                                 "end_of_turn": True, "turn_is_formatted": False})  # fmt: skip
    channel = ScriptedChannel(clock, {END: [(5 * MS, assembly_empty)]})
    result = await run_utterance(
        channel, AssemblyAIAdapter(), AUDIO, "flush", clock=clock, linger=0
    )
    assert result.outcome == "empty"


async def test_malformed_and_unknown_frames_are_counted_and_the_utterance_goes_on() -> None:
    clock = Clock()
    final = results("create a function that adds two numbers", final=True, speech_final=True)
    channel = ScriptedChannel(
        clock,
        {START: [(1 * MS, "{broken"), (2 * MS, b"\xff"), (3 * MS, '{"type":"Novel"}')],
         END: [(20 * MS, final)]},
    )  # fmt: skip
    result = await run_utterance(channel, DeepgramAdapter(), AUDIO, clock=clock, linger=0)
    assert result.malformed == {"bad_json": 1, "bad_encoding": 1}
    assert result.unknown == 1
    assert result.outcome == "ok"


async def test_a_lost_connection_is_disconnected_with_the_error_kept() -> None:
    clock = Clock()
    channel = ScriptedChannel(clock, {}, close_after=START + 3)
    result = await run_utterance(channel, DeepgramAdapter(), AUDIO, clock=clock)
    assert result.outcome == "disconnected"
    assert isinstance(result.transport_error, ConnectionResetError)


def test_scoring_normalises_case_and_punctuation() -> None:
    assert words("Run the TESTS, please!") == ["run", "the", "tests", "please"]
    assert word_error_ratio("run the tests", "Run the tests.") == 0.0
    assert word_error_ratio("run the tests", "run tests") == pytest.approx(1 / 3)
    assert word_error_ratio("run the tests", "") == 1.0
    reference = "create a function that adds two numbers"
    assert partial_matches("Create", reference)
    assert partial_matches("create a function that and", reference)
    assert not partial_matches("delete a function", reference)
    assert not partial_matches("create the", reference)
    assert not partial_matches("", reference)


async def test_frames_from_before_the_utterance_are_stale() -> None:
    clock = Clock()
    channel = ScriptedChannel(
        clock, {END: [(20 * MS, results("create a function that adds two numbers", final=True,
                                        speech_final=True))]},
    )  # fmt: skip
    # A late duplicate of the previous utterance's final, queued before this one began.
    channel.inbox.put_nowait((results("stop the music", final=True, speech_final=True), 0))
    result = await run_utterance(channel, DeepgramAdapter(), AUDIO, clock=clock, linger=0)
    assert result.stale == 1
    assert result.early_finals == []
    assert result.outcome == "ok"


def test_load_utterances_prepares_each_clip_the_way_the_adapter_sends_it(tmp_path: Path) -> None:
    assembly = AssemblyAIAdapter(AssemblyAIOptions(encoding="mulaw", sample_rate=8000))
    prepared = load_utterances(assembly, ["run_tests", "stop_music"], trailing=0.5)
    assert [u.clip.id for u in prepared] == ["run_tests", "stop_music"]
    assert all(u.clip.rate == 8000 and len(u.chunks[0]) == 400 for u in prepared)
    assert len(load_utterances(DeepgramAdapter())) == len(load_manifest().entries)
    with pytest.raises(AudioError, match="no clip 'nope'"):
        load_utterances(assembly, ["nope"])
    with pytest.raises(AudioError, match="manifest not found"):
        load_utterances(assembly, directory=tmp_path)


def test_probes_playing_the_same_clip_the_same_way_share_one_copy(tmp_path: Path) -> None:
    first = load_utterances(DeepgramAdapter(), ["stop_music", "lights_on"], trailing=0.5)
    again = load_utterances(DeepgramAdapter(), ["lights_on"], trailing=0.5)
    assert again[0] is first[1]
    # Sent another way (silence, encoding, rate): prepared apart.
    assert load_utterances(DeepgramAdapter(), ["lights_on"], trailing=1.0)[0] is not first[1]
    assembly = AssemblyAIAdapter(AssemblyAIOptions(encoding="mulaw", sample_rate=8000))
    assert load_utterances(assembly, ["lights_on"], trailing=0.5)[0] is not first[1]
    # A fixture edited on disk (a user's own folder, before a reload) is read afresh.
    bundled = load_manifest()
    entry = bundled.entry("stop_music")
    (tmp_path / "a.flac").write_bytes((bundled.directory / entry.file).read_bytes())
    clip = {"id": "a", "file": "a.flac", "transcript": entry.transcript,
            "speech_start": entry.speech_start, "speech_end": entry.speech_end}  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps({"clips": [clip]}))
    mine = load_utterances(DeepgramAdapter(), directory=tmp_path, trailing=0.5)[0]
    assert load_utterances(DeepgramAdapter(), directory=tmp_path, trailing=0.5)[0] is mine
    other = bundled.entry("lights_on")
    (tmp_path / "a.flac").write_bytes((bundled.directory / other.file).read_bytes())
    edited = load_utterances(DeepgramAdapter(), directory=tmp_path, trailing=0.5)[0]
    assert edited is not mine and edited.chunks != mine.chunks
