"""One utterance streamed to a provider at real-time pace, and what it measured.

Pure measurement: the channel is anything with `send` and a `recv` that returns each frame with
its arrival instant (probed.connection.Session is one); the adapter speaks the provider's
protocol; nothing here knows about metrics or configuration. Sender and reader run concurrently,
so a slow parse never delays audio and audio pacing never delays a timestamp.

Definitions (shared/reference/voice-protocols.md section 0.1):
  first partial latency = arrival of the first partial that matches the start of the reference
                          transcript - send time of the chunk holding the start of speech
  final latency         = arrival of the final transcript - send time of the chunk holding the
                          end of speech (known from the fixture, not guessed at run time)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from probed.adapters.base import AdapterError, SpeechAdapter
from probed.adapters.events import (
    Event,
    Final,
    Partial,
    ProviderError,
    SpeechStopped,
    Unknown,
)
from probed.audio.chunks import UtteranceAudio
from probed.audio.pacer import Pacer
from probed.speech.scoring import partial_matches, word_error_ratio, words

Mode = Literal["vad", "flush"]
# Bounded: these become the `result` label of probe_utterances_total.
Outcome = Literal["ok", "timeout", "error", "empty", "mismatch", "disconnected"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "timeout", "error", "empty", "mismatch", "disconnected")


class Channel(Protocol):
    async def recv(self) -> tuple[str | bytes, int]:
        """The next frame and the perf_counter_ns instant its bytes arrived."""
        ...

    async def send(self, data: str | bytes) -> None: ...


@dataclass
class UtteranceResult:
    clip_id: str
    mode: Mode
    outcome: Outcome = "timeout"
    first_partial_s: float | None = None
    final_s: float | None = None
    final_text: str | None = None
    final_rule: str | None = None
    # A refined final for the same turn (AssemblyAI formatting), after the final itself.
    revised_s: float | None = None
    # The provider's own end-of-speech signal, relative to the known end of speech.
    provider_eos_s: float | None = None
    wer: float | None = None
    # Finals that arrived before the end of speech was sent (the provider endpointed on a
    # mid-sentence pause): part of the transcript, not the final.
    early_finals: list[str] = field(default_factory=list)
    duplicate_finals: int = 0
    # Frames that arrived before this utterance began (late answers to the previous one on a
    # held session): skipped, never mistaken for this utterance's text.
    stale: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    unknown: int = 0
    provider_errors: list[ProviderError] = field(default_factory=list)
    send_lag: list[float] = field(default_factory=list)
    timeline: list[tuple[int, str]] = field(default_factory=list)
    t0_ns: int | None = None
    speech_start_sent_ns: int | None = None
    speech_end_sent_ns: int | None = None
    transport_error: BaseException | None = None

    def describe(self) -> list[str]:
        """The timeline as lines of text, milliseconds from the first chunk (debug output)."""
        origin = self.t0_ns or (self.timeline[0][0] if self.timeline else 0)
        return [f"{(at - origin) / 1e6:9.1f} ms  {what}" for at, what in self.timeline]


class _Run:
    def __init__(
        self,
        result: UtteranceResult,
        adapter: SpeechAdapter,
        audio: UtteranceAudio,
        clock: Callable[[], int],
    ) -> None:
        self.result = result
        self.adapter = adapter
        self.audio = audio
        self.clock = clock
        self.final_ns: int | None = None
        self.begun_ns = clock()
        self.stop = False  # no more reading needed: final in, fatal error, or transport gone
        self.changed = asyncio.Event()

    def note(self, at: int, what: str) -> None:
        self.result.timeline.append((at, what))

    def finish(self) -> None:
        self.stop = True
        self.changed.set()

    def on_event(self, event: Event, arrived: int) -> None:
        r = self.result
        self.note(arrived, repr(event)[:300])
        if isinstance(event, Partial):
            if (
                r.first_partial_s is None
                and r.speech_start_sent_ns is not None
                and arrived >= r.speech_start_sent_ns
                and partial_matches(event.text, self.audio.clip.transcript)
            ):
                r.first_partial_s = (arrived - r.speech_start_sent_ns) / 1e9
        elif isinstance(event, Final):
            self._on_final(event, arrived)
        elif isinstance(event, ProviderError):
            r.provider_errors.append(event)
            if event.fatal and self.final_ns is None:
                self.finish()
        elif isinstance(event, SpeechStopped):
            if r.provider_eos_s is None and r.speech_end_sent_ns is not None:
                r.provider_eos_s = (arrived - r.speech_end_sent_ns) / 1e9
        elif isinstance(event, Unknown):
            r.unknown += 1

    def _on_final(self, event: Final, arrived: int) -> None:
        r = self.result
        if r.speech_end_sent_ns is None or arrived < r.speech_end_sent_ns:
            if not event.revision and event.text:
                r.early_finals.append(event.text)
            return
        if self.final_ns is None:
            if event.revision:
                return
            self.final_ns = arrived
            r.final_s = (arrived - r.speech_end_sent_ns) / 1e9
            r.final_text = " ".join([*r.early_finals, event.text]).strip()
            r.final_rule = event.rule
            self.changed.set()
        elif event.revision:
            if r.revised_s is None:
                r.revised_s = (arrived - r.speech_end_sent_ns) / 1e9
        else:
            r.duplicate_finals += 1

    async def send_audio(
        self, channel: Channel, mode: Mode, on_lateness: Callable[[float], None] | None
    ) -> None:
        r, audio = self.result, self.audio

        def lateness(seconds: float) -> None:
            r.send_lag.append(seconds)
            if on_lateness is not None:
                on_lateness(seconds)

        # A Session writes audio frames straight to the socket when it can (probed.wsframe).
        send_chunk = getattr(channel, "send_audio", channel.send)

        async def send(index: int) -> None:
            # Marked as the chunk is handed over, so that no reply can be read before its mark.
            now = self.clock()
            if index == audio.start_chunk:
                r.speech_start_sent_ns = now
                self.note(now, "speech start sent")
            if index == audio.end_chunk:
                r.speech_end_sent_ns = now
                self.note(now, "speech end sent")
                self.changed.set()
            await send_chunk(self.adapter.audio_message(audio.chunks[index]))

        count = len(audio.chunks) if mode == "vad" else audio.end_chunk + 1
        pacer = Pacer(audio.chunk_seconds, on_lateness=lateness, clock=self.clock)
        try:
            # In vad mode the trailing silence stops once the final is in: it has done its job.
            await pacer.run(
                count, send, stop=lambda: self.final_ns is not None or self.stop, t0_ns=self.clock()
            )
            r.t0_ns = pacer.t0_ns
            if mode == "flush":
                flush = self.adapter.flush_message()
                if flush is not None:
                    await channel.send(flush)
                    self.note(self.clock(), "flush sent")
        except Exception as exc:  # any transport failure ends the utterance
            r.transport_error = exc
            self.finish()
        finally:
            r.t0_ns = pacer.t0_ns

    async def read(self, channel: Channel) -> None:
        r = self.result
        try:
            while not self.stop:
                data, arrived = await channel.recv()
                if arrived < self.begun_ns:
                    r.stale += 1
                    self.note(arrived, "stale frame (before this utterance)")
                    continue
                try:
                    events = self.adapter.parse(data)
                except AdapterError as exc:
                    r.malformed[exc.reason] = r.malformed.get(exc.reason, 0) + 1
                    self.note(arrived, f"malformed frame ({exc.reason})")
                    continue
                for event in events:
                    self.on_event(event, arrived)
        except Exception as exc:  # the connection is gone; the caller decides
            r.transport_error = exc
            self.finish()


async def run_utterance(
    channel: Channel,
    adapter: SpeechAdapter,
    audio: UtteranceAudio,
    mode: Mode = "vad",
    *,
    final_timeout: float = 5.0,
    mismatch_wer: float = 0.5,
    linger: float = 0.2,
    on_lateness: Callable[[float], None] | None = None,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> UtteranceResult:
    """Stream `audio` and wait for its final transcript.

    `final_timeout` counts from the moment the end of speech was sent. After the final, the reader
    stays `linger` seconds to catch a provider that finalises twice. A transport failure ends
    the utterance as "disconnected" with the exception in `transport_error`, for the caller to
    re-raise to its session supervisor (which classifies close codes).
    """
    if mode not in ("vad", "flush"):
        raise ValueError(f"unknown end-of-speech mode {mode!r}")
    adapter.new_turn()
    result = UtteranceResult(clip_id=audio.clip.id, mode=mode)
    run = _Run(result, adapter, audio, clock)
    # Even a provider that never answers cannot hold the utterance longer than this.
    guard_ns = int((len(audio.chunks) * audio.chunk_seconds + final_timeout + 5.0) * 1e9)
    started = clock()
    async with asyncio.TaskGroup() as group:
        sender = group.create_task(run.send_audio(channel, mode, on_lateness))
        reader = group.create_task(run.read(channel))
        while not run.stop:
            now = clock()
            if run.final_ns is not None:
                linger_left = run.final_ns + int(linger * 1e9) - now
                if linger_left <= 0:
                    break
                wait_ns = linger_left
            elif result.speech_end_sent_ns is not None:
                wait_ns = result.speech_end_sent_ns + int(final_timeout * 1e9) - now
                if wait_ns <= 0:
                    run.note(now, "timeout")
                    break
            else:
                wait_ns = started + guard_ns - now
                if wait_ns <= 0:
                    break
            run.changed.clear()
            try:
                async with asyncio.timeout(wait_ns / 1e9):
                    await run.changed.wait()
            except TimeoutError:
                pass
        run.stop = True
        sender.cancel()
        reader.cancel()
    result.outcome = _outcome(result, mismatch_wer, audio.clip.transcript)
    return result


def _outcome(result: UtteranceResult, mismatch_wer: float, reference: str) -> Outcome:
    if result.final_text is None:
        if result.transport_error is not None:
            return "disconnected"
        if result.provider_errors:
            return "error"
        return "timeout"
    if not words(result.final_text):
        return "empty"
    result.wer = word_error_ratio(reference, result.final_text)
    return "mismatch" if result.wer > mismatch_wer else "ok"
