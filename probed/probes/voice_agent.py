"""Voice-agent probe: a held conversation with a realtime voice model, a turn every interval.

Each turn says a fixture at real-time pace and times, from the chunk holding its known end of
speech, the user transcript, the tool call the fixture asks for, the first response audio and
the first sound on the probe's playback clock (probed/voice/conversation.py defines them);
every `barge_in.every`-th turn the probe speaks over the answer and times the agent yielding.
This module wires that core to the session supervisor and the metric families.

Go-away: the turn in flight is measured to its end, then the session ends as `go_away`; the
supervisor reconnects at once carrying the latest resumable handle into the next setup, and
the time from the go-away to the next session being ready is recorded with how it resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Final

import structlog
from websockets.exceptions import ConnectionClosed

from probed.adapters.voice import VoiceAdapter
from probed.config.schema.voice_agent import VoiceAgentProbeConfig
from probed.connection import GoAway, ServerGone, Session, SessionEnded, Supervisor
from probed.dial import ConnectError
from probed.metrics import SEND_LAG_BUCKETS, ProbeMetrics
from probed.speech import SetupError, close_session, open_session
from probed.speech.provider import ProviderEndpoint
from probed.voice import BargeInResult, Conversation, TurnResult
from probed.voice.provider import VoiceClips, build_voice_adapter, expectations, load_clips
from probed.voice.record import VoiceRecorder

# Bounded: how the session after a go-away started. fresh: no resumable handle to carry;
# refused: the provider would not resume with the handle (the next attempt starts fresh).
RESUME_RESULTS: Final = ("resumed", "fresh", "refused")


class ProviderSetupFailed(SessionEnded):
    """The provider refused or botched the session setup."""

    reason = "protocol_error"


class VoiceAgentProbe:
    def __init__(
        self,
        cfg: VoiceAgentProbeConfig,
        metrics: ProbeMetrics,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._log = log
        self._recorder = VoiceRecorder(metrics)
        self._send_lag = metrics.histogram(
            "probe_audio_send_lag_seconds",
            "How late audio chunks left against their real-time schedule.",
            SEND_LAG_BUCKETS,
        )
        self._resumptions = metrics.counter(
            "probe_voice_resumptions_total",
            "Sessions started after a go-away, by how (resumed with a handle, fresh, refused).",
            "result",
            RESUME_RESULTS,
        )
        self._resume = metrics.latency(
            "probe_voice_resume_seconds", "Go-away to the next session ready."
        )
        self._adapter: VoiceAdapter = build_voice_adapter(cfg)
        self._expect = expectations(cfg)
        self._clips: VoiceClips | None = None
        self._next = itertools.count()
        # Set when a session ended on a go-away, until the next one is ready.
        self._go_away_ns: int | None = None
        self.supervisor = Supervisor(
            ProviderEndpoint(cfg, self._adapter),
            metrics=metrics.session(),
            handler=self,
            log=log,
        )

    async def _load(self) -> VoiceClips:
        if self._clips is None:
            # Decoding and resampling is CPU work: off the loop.
            self._clips = await asyncio.to_thread(load_clips, self._cfg, self._adapter)
        return self._clips

    async def run(self) -> None:
        await self._load()
        await self.supervisor.run()

    # -- SessionHandler -------------------------------------------------------------------------

    async def setup(self, session: Session) -> None:
        adapter = build_voice_adapter(self._cfg)
        handle = session.resume_handle if adapter.resumable else None
        adapter.resume_with(handle)
        try:
            await open_session(session, adapter)
        except (SetupError, ConnectionClosed) as exc:
            if handle is not None:
                # A stale or forged handle: the next attempt starts a fresh session rather
                # than being refused for ever.
                self._resumptions.labels("refused").inc()
                self.supervisor.resume_handle = session.resume_handle = None
            if isinstance(exc, SetupError):
                self._log.warning(
                    "provider setup failed", reason=exc.reason, detail=session.redact(exc.detail)
                )
                raise ProviderSetupFailed() from None
            raise
        self._adapter = adapter
        if self._go_away_ns is not None:
            self._resumptions.labels("resumed" if handle else "fresh").inc()
            self._resume.observe(self._go_away_ns, time.perf_counter_ns())
            self._go_away_ns = None

    async def serve(self, session: Session) -> None:
        clips = await self._load()
        loop = asyncio.get_running_loop()
        async with Conversation(
            session,
            self._adapter,
            mode=self._cfg.end_of_speech,
            on_lateness=self._send_lag.observe,
        ) as talk:
            watch = asyncio.create_task(talk.interrupted())
            try:
                interval = self._cfg.interval
                start, slot = loop.time(), 0
                while True:
                    slot += 1
                    due = start + slot * interval
                    if loop.time() - due > interval:  # starved: skip, never burst
                        slot = int((loop.time() - start) / interval) + 1
                        due = start + slot * interval
                    # Between turns, a go-away or a lost connection ends the wait at once.
                    await asyncio.wait({watch}, timeout=max(0.0, due - loop.time()))
                    self._carry_on(session, talk)
                    fatal = await self._turn(talk, clips)
                    self._carry_on(session, talk)
                    if fatal:
                        raise ServerGone("the provider ended the session with a fatal error")
            finally:
                watch.cancel()

    def _carry_on(self, session: Session, talk: Conversation) -> None:
        """Keep the latest handle; end the session if the provider is going or gone."""
        if talk.resume_handle is not None:
            session.resume_handle = talk.resume_handle
        if talk.transport_error is not None:
            # The session is gone: its supervisor classifies how (close code, reset, ...).
            raise talk.transport_error
        if talk.go_away is not None:
            self._go_away_ns = talk.go_away_ns
            self._log.info(
                "go-away",
                time_left_s=talk.go_away.time_left,
                resumable=talk.resume_handle is not None,
            )
            raise GoAway()

    async def drain(self, session: Session) -> None:
        # Nothing in flight: the session ends on a go-away only once its turn was measured.
        return None

    def ended(self, session: Session, reason: str) -> None:
        return None

    # -- one turn ---------------------------------------------------------------------------------

    async def _turn(self, talk: Conversation, clips: VoiceClips) -> bool:
        """Say the next fixture (or barge in on its answer) and record it; True if the provider
        reported a fatal error."""
        n = next(self._next)
        audio = clips.turns[n % len(clips.turns)]
        expect = self._expect.get(audio.clip.id)
        barge = self._cfg.barge_in
        timeout = self._cfg.answer_timeout
        if barge is not None and clips.interruption is not None and (n + 1) % barge.every == 0:
            b = await talk.barge_in(
                audio,
                clips.interruption,
                expect,
                after=barge.after,
                yield_timeout=barge.yield_timeout,
                answer_timeout=timeout,
            )
            self._recorder.barge_in(b)
            self._report(b.first, b)
            turns = [b.first] if b.second is None else [b.first, b.second]
        else:
            r = await talk.turn(audio, expect, answer_timeout=timeout)
            self._recorder.turn(r)
            self._report(r, None)
            turns = [r]
        return any(e.fatal for t in turns for e in t.provider_errors)

    def _report(self, r: TurnResult, barge: BargeInResult | None) -> None:
        ok = r.outcome == "ok" and r.tool_result in (None, "ok")
        if barge is not None:
            ok = ok and barge.outcome == "yielded"
        self._metrics.set_success(ok)
        (self._log.debug if ok else self._log.warning)(
            "turn",
            clip=r.clip_id,
            result=r.outcome,
            tool=r.tool_result,
            stt_final_ms=_ms(r.stt_final_s),
            tool_call_ms=_ms(r.tool_call_s),
            response_ms=_ms(r.response_s),
            turn_ms=_ms(r.turn_s),
            barge_in=None if barge is None else barge.outcome,
            bargein_ms=None if barge is None else _ms(barge.bargein_s),
        )
        if not ok:
            what = r.outcome if r.outcome != "ok" else f"tool call {r.tool_result}"
            if barge is not None and barge.outcome != "yielded":
                what = f"barge-in {barge.outcome}"
            self._metrics.status.error("turn", what, r.stt_text or "")

    # -- one-shot -------------------------------------------------------------------------------

    async def once(self) -> bool:
        """Connect, say one fixture, print its timeline, close."""
        clips = await self._load()
        try:
            session = await self.supervisor.connect()
        except ConnectError as exc:
            self._log.error(  # classified: its reason, not a traceback
                "connect failed", reason=exc.reason, phase=exc.phase, detail=exc.detail
            )
            return False
        audio = clips.turns[0]
        try:
            async with Conversation(session, self._adapter, mode=self._cfg.end_of_speech) as talk:
                r = await talk.turn(
                    audio, self._expect.get(audio.clip.id), answer_timeout=self._cfg.answer_timeout
                )
        finally:
            with contextlib.suppress(Exception):
                await close_session(session, self._adapter)
            await session.ws.close()
        for line in r.describe():
            self._log.info("timeline", step=session.redact(line))
        self._report(r, None)
        return r.outcome == "ok" and r.tool_result in (None, "ok")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 1)
