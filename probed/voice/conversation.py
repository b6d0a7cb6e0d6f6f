"""A held conversation with a voice agent: turns and barge-ins, timed from the known speech.

Like probed.speech.run_utterance, but for a turn with an answer. A microphone task sends audio
at real-time pace on absolute deadlines for the whole conversation (in vad mode real silence
after the speech until the turn is measured, and between turns if asked; nothing but the speech
in flush mode); a reader task timestamps and parses
every frame and routes its events to the turn they belong to. Nothing here knows about metrics,
configuration or reconnecting.

Definitions, all from the instant the chunk holding the fixture's end of speech was sent:
  stt final        arrival of the final user transcript (input transcription)
  response         arrival of the first response audio chunk
  turn             first non-silent instant of the answer on the probe's playback clock
  tool call        arrival of the first complete function call
  provider eos     arrival of the provider's end-of-speech signal
  provider endpoint  (provider view) the provider's own end-of-speech offset on its audio clock
                   minus the fixture's end of speech on that clock (OpenAI audio_end_ms)
and for a barge-in, from the instant the chunk holding the interruption's start of speech was
sent until the agent yields (an interrupted/cancelled event, or its audio stopping).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from probed.adapters.base import AdapterError
from probed.adapters.events import (
    Event,
    Final,
    GoAway,
    Interrupted,
    Partial,
    ProviderError,
    ResponseAudio,
    ResumptionHandle,
    SpeechStarted,
    SpeechStopped,
    ToolCall,
    TurnComplete,
    Unknown,
)
from probed.adapters.voice import VoiceAdapter, canned_result
from probed.audio.chunks import UtteranceAudio
from probed.audio.pacer import Pacer
from probed.speech.scoring import word_error_ratio, words
from probed.speech.utterance import Channel
from probed.voice.playback import Playback
from probed.voice.tools import ToolExpectation, ToolResult, judge

Mode = Literal["vad", "flush"]
# Bounded: the `result` label of a voice turn counter.
TurnOutcome = Literal["ok", "no_response", "error", "disconnected"]
TURN_OUTCOMES: tuple[TurnOutcome, ...] = ("ok", "no_response", "error", "disconnected")
BargeInOutcome = Literal["yielded", "never", "no_answer", "disconnected"]
BARGE_IN_OUTCOMES: tuple[BargeInOutcome, ...] = ("yielded", "never", "no_answer", "disconnected")
ToolAnswer = Callable[[ToolCall], Mapping[str, object]]


_RATE = re.compile(r"rate=(\d{4,6})")


def pcm_rate(mime: str, default: int) -> int | None:
    """The sample rate of raw PCM16 audio from its MIME type (`default` when it names none);
    None when it is not raw PCM."""
    if not mime.lower().startswith(("audio/pcm", "audio/l16")):
        return None
    match = _RATE.search(mime)
    return int(match.group(1)) if match else default


def _seconds(later: int | None, earlier: int | None) -> float | None:
    if later is None or earlier is None:
        return None
    return (later - earlier) / 1e9


@dataclass
class TurnResult:
    clip_id: str
    mode: Mode
    outcome: TurnOutcome = "no_response"
    stt_final_s: float | None = None
    stt_text: str | None = None
    stt_rule: str | None = None
    wer: float | None = None
    response_s: float | None = None
    turn_s: float | None = None
    tool_call_s: float | None = None
    tool_result: ToolResult | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    provider_eos_s: float | None = None
    provider_endpoint_s: float | None = None
    interrupted: bool = False
    completed: bool = False
    response_audio_s: float = 0.0
    # Response audio chunks that were not PCM, or changed rate mid-answer: not played.
    unexpected_audio: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    unknown: int = 0
    provider_errors: list[ProviderError] = field(default_factory=list)
    timeline: list[tuple[int, str]] = field(default_factory=list)
    clip_start_sent_ns: int | None = None
    speech_start_sent_ns: int | None = None
    speech_end_sent_ns: int | None = None
    # The fixture's end of speech on the provider's audio clock (seconds of audio sent).
    speech_end_offset: float | None = None
    transport_error: BaseException | None = None
    # The instants behind the figures above (perf_counter_ns), by milestone: stt_final,
    # response, turn, tool_call, provider_eos. Each latency is at_ns[m] - speech_end_sent_ns.
    at_ns: dict[str, int] = field(default_factory=dict)

    def describe(self) -> list[str]:
        origin = self.timeline[0][0] if self.timeline else 0
        return [f"{(at - origin) / 1e6:9.1f} ms  {what}" for at, what in self.timeline]


@dataclass
class BargeInResult:
    first: TurnResult
    second: TurnResult | None = None
    outcome: BargeInOutcome = "no_answer"
    yielded_by: Literal["event", "audio_stopped"] | None = None
    bargein_s: float | None = None
    # The provider's VAD heard the interruption (SpeechStarted), from its start of speech sent.
    provider_heard_s: float | None = None
    # bargein_s = yield_ns - start_ns, when the agent yielded.
    start_ns: int | None = None
    yield_ns: int | None = None


class _Turn:
    def __init__(
        self, audio: UtteranceAudio, mode: Mode, expect: ToolExpectation | None, rate: int
    ) -> None:
        self.audio = audio
        self.expect = expect
        self.result = TurnResult(clip_id=audio.clip.id, mode=mode)
        self.playback = Playback(rate)
        self.first_audio_ns: int | None = None
        self.final_ns: int | None = None
        self.last_partial_ns: int | None = None
        self.complete_ns: int | None = None
        self.interrupted_ns: int | None = None
        self.fatal = False
        self.changed = asyncio.Event()

    def note(self, at: int, what: str) -> None:
        self.result.timeline.append((at, what))
        self.changed.set()

    @property
    def answer_over(self) -> bool:
        return self.interrupted_ns is not None or (
            self.complete_ns is not None and self.first_audio_ns is not None
        )


class Conversation:
    """One held session. Use as `async with Conversation(channel, adapter) as talk:`."""

    def __init__(
        self,
        channel: Channel,
        adapter: VoiceAdapter,
        *,
        mode: Mode = "vad",
        tool_answer: ToolAnswer = canned_result,
        quiet: float = 1.5,
        transcript_grace: float = 1.0,
        on_lateness: Callable[[float], None] | None = None,
        idle_audio: bool = False,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        """`idle_audio`: in vad mode keep sending silence between turns too, like an open
        microphone; by default silence flows only during a turn (after the speech, while the
        answer plays), since providers bill audio by its duration."""
        if mode not in ("vad", "flush"):
            raise ValueError(f"unknown end-of-speech mode {mode!r}")
        self.channel = channel
        self.adapter = adapter
        self.mode: Mode = mode
        self.tool_answer = tool_answer
        self.quiet = quiet
        self.transcript_grace = transcript_grace
        self.on_lateness = on_lateness
        self.clock = clock
        self.idle_audio = idle_audio
        self._in_turn = False
        self.chunk_seconds = adapter.chunk_ms / 1000
        self._silence = bytes(2 * adapter.sample_rate * adapter.chunk_ms // 1000)
        self.audio_sent_s = 0.0  # the provider's audio clock
        self.send_lag: list[float] = []
        self.resume_handle: str | None = None
        self.go_away: GoAway | None = None
        self.go_away_ns: int | None = None
        self.transport_error: BaseException | None = None
        self._playing: _Turn | None = None
        self._position = 0
        self._current: _Turn | None = None  # gets transcript events
        self._answering: _Turn | None = None  # gets the answer's events
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Conversation:
        self._tasks = [
            asyncio.create_task(self._microphone()),
            asyncio.create_task(self._read()),
        ]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def interrupted(self) -> None:
        """Returns once the provider has announced a go-away or the connection is lost: for a
        caller waiting between turns, which must not sleep through either."""
        while self.go_away is None and self.transport_error is None:
            self._changed.clear()
            await self._changed.wait()

    # -- the microphone -------------------------------------------------------------------

    async def _microphone(self) -> None:
        def lateness(seconds: float) -> None:
            self.send_lag.append(seconds)
            if self.on_lateness is not None:
                self.on_lateness(seconds)

        pacer = Pacer(self.chunk_seconds, on_lateness=lateness, clock=self.clock)
        try:
            await pacer.run(1 << 62, self._tick, stop=lambda: self._closed)
        except Exception as exc:  # the connection is gone: every waiting turn ends
            self._lost(exc)

    async def _tick(self, _index: int) -> None:
        turn = self._playing
        if turn is None:
            if self.mode == "vad" and (self._in_turn or self.idle_audio):
                await self.channel.send(self.adapter.audio_message(self._silence))
                self.audio_sent_s += self.chunk_seconds
            return
        audio, r = turn.audio, turn.result
        index = self._position
        if index == 0:
            for message in self.adapter.turn_start_messages():
                await self.channel.send(message)
        now = self.clock()
        if index == 0:
            r.clip_start_sent_ns = now
        if index == audio.start_chunk:
            r.speech_start_sent_ns = now
            turn.note(now, "speech start sent")
        if index == audio.end_chunk:
            r.speech_end_sent_ns = now
            r.speech_end_offset = (
                self.audio_sent_s + audio.clip.speech_end - index * self.chunk_seconds
            )
            turn.note(now, "speech end sent")
        await self.channel.send(self.adapter.audio_message(audio.chunks[index]))
        self.audio_sent_s += self.chunk_seconds
        self._position += 1
        if self.mode == "flush" and index == audio.end_chunk:
            for message in self.adapter.flush_messages():
                await self.channel.send(message)
            turn.note(self.clock(), "flush sent")
            self._playing = None
        elif self._position >= audio.clip_chunks:
            self._playing = None

    def _play(self, turn: _Turn) -> None:
        self._position = 0
        self._playing = turn

    # -- the reader -------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                data, arrived = await self.channel.recv()
                try:
                    events = self.adapter.parse(data)
                except AdapterError as exc:
                    turn = self._current or self._answering
                    if turn is not None:
                        m = turn.result.malformed
                        m[exc.reason] = m.get(exc.reason, 0) + 1
                        turn.note(arrived, f"malformed frame ({exc.reason})")
                    continue
                for event in events:
                    await self._on_event(event, arrived)
        except Exception as exc:
            self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        if self.transport_error is None:
            self.transport_error = exc
        for turn in (self._current, self._answering):
            if turn is not None:
                turn.result.transport_error = exc
                turn.changed.set()
        self._changed.set()

    async def _on_event(self, event: Event, arrived: int) -> None:
        if isinstance(event, ResumptionHandle):
            if event.resumable:
                self.resume_handle = event.handle
            return
        if isinstance(event, GoAway):
            # The turn in flight goes on: the caller reconnects once it is measured.
            self.go_away, self.go_away_ns = event, arrived
            self._changed.set()
            for turn in (self._current, self._answering):
                if turn is not None:
                    turn.note(arrived, repr(event))
            return
        answer = self._answering
        current = self._current
        if isinstance(event, ResponseAudio | TurnComplete | Interrupted | ToolCall):
            target = answer if answer is not None and not answer.answer_over else current
        else:
            target = current
        if target is None:
            return
        if not isinstance(event, ResponseAudio):
            target.note(arrived, repr(event))
        if isinstance(event, ResponseAudio | TurnComplete | Interrupted | ToolCall):
            await self._on_answer(target, event, arrived)
        else:
            self._on_hearing(target, event, arrived)
        target.changed.set()

    async def _on_answer(
        self,
        target: _Turn,
        event: ResponseAudio | TurnComplete | Interrupted | ToolCall,
        arrived: int,
    ) -> None:
        r = target.result
        if isinstance(event, ResponseAudio):
            self._on_audio(target, event, arrived)
        elif isinstance(event, ToolCall):
            r.tool_calls.append(event)
            if r.tool_call_s is None:
                r.tool_call_s = _seconds(arrived, r.speech_end_sent_ns)
                r.at_ns["tool_call"] = arrived
            for message in self.adapter.tool_response_messages(event, self.tool_answer(event)):
                await self.channel.send(message)
        elif isinstance(event, Interrupted):
            if target.interrupted_ns is None:
                target.interrupted_ns = arrived
                target.playback.stop(arrived)
                r.interrupted = True
        # A turnComplete before any audio (after a tool call, or closing an interrupted turn)
        # does not end this turn's answer.
        elif target.first_audio_ns is not None and target.complete_ns is None:
            target.complete_ns = arrived
            r.completed = True

    def _on_hearing(self, target: _Turn, event: Event, arrived: int) -> None:
        r = target.result
        if isinstance(event, Partial):
            target.last_partial_ns = arrived
        elif isinstance(event, Final):
            self._on_final(target, event, arrived)
        elif isinstance(event, SpeechStopped):
            if r.provider_eos_s is None and r.speech_end_sent_ns is not None:
                r.provider_eos_s = _seconds(arrived, r.speech_end_sent_ns)
                r.at_ns["provider_eos"] = arrived
                if event.offset is not None and r.speech_end_offset is not None:
                    r.provider_endpoint_s = event.offset - r.speech_end_offset
        elif isinstance(event, SpeechStarted):
            pass
        elif isinstance(event, ProviderError):
            r.provider_errors.append(event)
            if event.fatal:
                target.fatal = True
        elif isinstance(event, Unknown):
            r.unknown += 1

    def _on_final(self, turn: _Turn, event: Final, arrived: int) -> None:
        r = turn.result
        if turn.final_ns is not None or r.speech_end_sent_ns is None:
            return
        turn.final_ns = arrived
        r.stt_final_s = _seconds(arrived, r.speech_end_sent_ns)
        r.at_ns["stt_final"] = arrived
        r.stt_text, r.stt_rule = event.text, event.rule

    def _on_audio(self, turn: _Turn, event: ResponseAudio, arrived: int) -> None:
        r = turn.result
        rate = pcm_rate(event.mime, self.adapter.output_rate)
        if rate is None:
            # Not raw PCM: it arrived (the response latency stands) but cannot be played here.
            r.unexpected_audio += 1
        elif rate != turn.playback.rate:
            if turn.playback.first_arrival_ns is None:
                turn.playback = Playback(rate)
            else:
                r.unexpected_audio += 1
                rate = None
        if turn.first_audio_ns is None:
            turn.first_audio_ns = arrived
            r.response_s = _seconds(arrived, r.speech_end_sent_ns)
            r.at_ns["response"] = arrived
            turn.note(arrived, "first response audio")
        if rate is None:
            return
        sound = turn.playback.add(event.data, arrived)
        r.response_audio_s = turn.playback.seconds
        if sound is not None:
            r.turn_s = _seconds(sound, r.speech_end_sent_ns)
            r.at_ns["turn"] = sound
            turn.note(sound, "first sound on the playback clock")

    # -- turns ----------------------------------------------------------------------------

    def _begin(self, audio: UtteranceAudio, expect: ToolExpectation | None) -> _Turn:
        if abs(audio.chunk_seconds - self.chunk_seconds) > 1e-9:
            raise ValueError("the clip was cut in chunks of another size than the adapter's")
        turn = _Turn(audio, self.mode, expect, self.adapter.output_rate)
        # A connection already lost fails the turn at once instead of at its timeout.
        turn.result.transport_error = self.transport_error
        self.adapter.new_turn()
        self._in_turn = True
        self._current = turn
        self._play(turn)
        return turn

    async def _wait(self, turn: _Turn, until_ns: int) -> bool:
        """Wait for a change or the deadline; False when the deadline has passed."""
        wait = until_ns - self.clock()
        if wait <= 0:
            return False
        turn.changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait / 1e9):
                await turn.changed.wait()
        return True

    async def _measure(self, turn: _Turn, limit: float) -> TurnResult:
        """Wait for the turn's answer, its transcript and its tool call, or `limit` seconds
        after the end of speech."""
        r = turn.result
        guard = self.clock() + int((len(turn.audio.chunks) * self.chunk_seconds + limit) * 1e9)
        settled = False
        while r.transport_error is None and not turn.fatal:
            now = self.clock()
            end = r.speech_end_sent_ns
            if end is None:
                if now >= guard:
                    break
                await self._wait(turn, guard)
                continue
            quiet_at: int | None = None
            if turn.final_ns is None and not settled:
                quiet_at = max(end, turn.last_partial_ns or end) + int(self.quiet * 1e9)
                if now >= quiet_at:
                    settled = True
                    for event in self.adapter.settle():
                        await self._on_event(event, now)
                    continue
            hard = end + int(limit * 1e9)
            if turn.answer_over:
                over = turn.interrupted_ns or turn.complete_ns or now
                grace_end = over + int(self.transcript_grace * 1e9)
                if turn.final_ns is not None or now >= grace_end:
                    break
                hard = min(hard, grace_end)
            if now >= hard:
                turn.note(now, "timeout")
                break
            await self._wait(turn, hard if quiet_at is None else min(hard, quiet_at))
        self._finish(turn)
        return r

    def _finish(self, turn: _Turn) -> None:
        r = turn.result
        r.tool_result = judge(turn.expect, r.tool_calls)
        if r.stt_text is not None and words(r.stt_text):
            r.wer = word_error_ratio(turn.audio.clip.transcript, r.stt_text)
        if turn.first_audio_ns is not None:
            r.outcome = "ok"
        elif r.transport_error is not None:
            r.outcome = "disconnected"
        elif r.provider_errors:
            r.outcome = "error"
        else:
            r.outcome = "no_response"

    async def turn(
        self,
        audio: UtteranceAudio,
        expect: ToolExpectation | None = None,
        *,
        answer_timeout: float = 5.0,
    ) -> TurnResult:
        """Say `audio` and measure the answer; `answer_timeout` counts from the end of speech."""
        turn = self._begin(audio, expect)
        self._answering = turn
        try:
            return await self._measure(turn, answer_timeout)
        finally:
            self._current = self._answering = None
            self._in_turn = False

    async def barge_in(
        self,
        first: UtteranceAudio,
        interruption: UtteranceAudio,
        expect: ToolExpectation | None = None,
        *,
        after: float = 0.3,
        yield_timeout: float = 2.0,
        answer_timeout: float = 5.0,
    ) -> BargeInResult:
        """Say `first`; once its answer has played `after` seconds on the playback clock, say
        `interruption` over it and time how long the agent takes to yield."""
        one = self._begin(first, expect)
        self._answering = one
        result = BargeInResult(first=one.result)
        try:
            await self._until_audible(one, after, answer_timeout)
            if one.result.transport_error is not None:
                self._finish(one)
                result.outcome = "disconnected"
                return result
            if one.playback.first_sound_ns is None or one.answer_over:
                self._finish(one)
                return result  # no answer to interrupt
            # The interruption's transcript goes to `two`; the answer still goes to `one`
            # until it is over (it may never be, and its audio is not the next answer).
            two = self._begin(interruption, None)
            await self._barge(one, two, result, yield_timeout)
            result.second = await self._measure(two, answer_timeout)
            return result
        finally:
            self._current = self._answering = None
            self._in_turn = False

    async def _until_audible(self, one: _Turn, after: float, limit: float) -> None:
        r = one.result
        guard = self.clock() + int((len(one.audio.chunks) * self.chunk_seconds + limit) * 1e9)
        while r.transport_error is None and not one.fatal and not one.answer_over:
            sound = one.playback.first_sound_ns
            deadline = guard if sound is None else sound + int(after * 1e9)
            if not await self._wait(one, deadline):
                return

    async def _barge(
        self, one: _Turn, two: _Turn, result: BargeInResult, yield_timeout: float
    ) -> None:
        while two.result.speech_start_sent_ns is None and two.result.transport_error is None:
            two.changed.clear()
            await two.changed.wait()
        # In flush mode the client's own activity signal leads its first chunk: that is when
        # the agent could first know the user is speaking.
        start = (
            two.result.speech_start_sent_ns
            if self.mode == "vad" or not self.adapter.turn_start_messages()
            else two.result.clip_start_sent_ns
        )
        r = one.result
        deadline = (start or self.clock()) + int(yield_timeout * 1e9)
        while r.transport_error is None and not one.answer_over:
            if not await self._wait(one, deadline):
                break
        self._finish(one)
        heard = [at for at, what in two.result.timeline if what.startswith("SpeechStarted")]
        if heard and start is not None:
            result.provider_heard_s = _seconds(heard[0], start)
        if r.transport_error is not None:
            result.outcome = "disconnected"
        elif one.interrupted_ns is not None:
            result.outcome, result.yielded_by = "yielded", "event"
            result.bargein_s = _seconds(one.interrupted_ns, start)
            result.start_ns, result.yield_ns = start, one.interrupted_ns
        elif one.complete_ns is None and not one.playback.playing(self.clock()):
            # No word from the agent, but its audio stopped before the answer was complete.
            result.outcome, result.yielded_by = "yielded", "audio_stopped"
            result.bargein_s = max(0.0, _seconds(one.playback.until_ns, start) or 0.0)
            if start is not None and one.playback.until_ns is not None:
                result.start_ns, result.yield_ns = start, max(start, one.playback.until_ns)
        else:
            result.outcome = "never"
