"""Speech-to-text probe: fixture speech streamed at real-time pace, timed to the final transcript.

Every `interval` the next fixture is streamed like a microphone would (chunks on absolute
deadlines), over one held session or a session per utterance. Latency counts from the instant
the chunk holding the known end of speech was sent (fixture manifest, not a VAD at run time) to
the final transcript's arrival; in `vad` mode real trailing silence follows and the provider
endpoints, in `flush` mode its finalize message does. The measurement core is probed/speech/;
this module only wires it to the session supervisor and the metric families.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Final

import structlog
from websockets.exceptions import ConnectionClosed

from probed.adapters.base import SpeechAdapter
from probed.audio.chunks import UtteranceAudio
from probed.config.schema.speech import SpeechProbeConfig
from probed.connection import Session, SessionEnded, Supervisor
from probed.delivery import open_loop
from probed.dial import ConnectError
from probed.metrics import SEND_LAG_BUCKETS, ProbeMetrics
from probed.speech import OUTCOMES, SetupError, UtteranceResult, close_session, open_session
from probed.speech.fixtures import load_utterances
from probed.speech.provider import ProviderEndpoint, build_adapter
from probed.speech.session import keep_alive
from probed.speech.utterance import run_utterance

WER_BUCKETS: Final = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)


class ProviderSetupFailed(SessionEnded):
    """The provider refused or botched the session setup."""

    reason = "protocol_error"


class SpeechProbe:
    def __init__(
        self,
        cfg: SpeechProbeConfig,
        metrics: ProbeMetrics,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._log = log
        self._final = metrics.latency(
            "probe_stt_final_seconds", "End of speech to final transcript.", primary=True
        )
        self._first_partial = metrics.latency(
            "probe_stt_first_partial_seconds", "Speech start to the first matching partial."
        )
        self._wer = metrics.histogram(
            "probe_stt_word_error_ratio", "Word error ratio of the final transcript.", WER_BUCKETS
        )
        self._utterances = metrics.counter(
            "probe_utterances_total", "Utterances by result.", "result", OUTCOMES
        )
        self._send_lag = metrics.histogram(
            "probe_audio_send_lag_seconds",
            "How late audio chunks left against their real-time schedule.",
            SEND_LAG_BUCKETS,
        )
        self._adapter: SpeechAdapter = build_adapter(cfg)
        self._clips: list[UtteranceAudio] = []
        self._next = itertools.count()
        self.supervisor = Supervisor(
            ProviderEndpoint(cfg, self._adapter),
            metrics=metrics.session(),
            handler=self,
            log=log,
            cycle=cfg.interval if cfg.session == "per_utterance" else None,
        )

    async def _load(self) -> None:
        if not self._clips:
            # Decoding and resampling is CPU work: off the loop, so other probes' measurements
            # are not delayed by it.
            self._clips = await asyncio.to_thread(
                load_utterances,
                self._adapter,
                self._cfg.fixtures,
                directory=self._cfg.fixtures_dir,
                trailing=self._cfg.trailing_silence,
            )

    async def run(self) -> None:
        await self._load()
        await self.supervisor.run()

    # -- SessionHandler -------------------------------------------------------------------------

    async def setup(self, session: Session) -> None:
        self._adapter = build_adapter(self._cfg)
        try:
            await open_session(session, self._adapter)
        except SetupError as exc:
            self._log.warning(
                "provider setup failed", reason=exc.reason, detail=session.redact(exc.detail)
            )
            raise ProviderSetupFailed() from None

    async def serve(self, session: Session) -> None:
        if self._cfg.session == "per_utterance":
            await self.utterance(session)
            with contextlib.suppress(Exception):
                await close_session(session, self._adapter)
            return
        idle: asyncio.Task[None] | None = None
        try:
            async for _slot in open_loop(self._cfg.interval):
                if idle is not None:
                    idle.cancel()
                    await asyncio.gather(idle, return_exceptions=True)
                await self.utterance(session)
                # Between utterances the provider may want a keepalive (Deepgram closes an idle
                # stream after 10 s): sent until the next slot comes round.
                idle = asyncio.create_task(self._keep_alive(session))
        finally:
            if idle is not None:
                idle.cancel()

    async def _keep_alive(self, session: Session) -> None:
        # A send that fails here shows up at the next utterance, which the supervisor classifies.
        with contextlib.suppress(ConnectionClosed, OSError):
            await keep_alive(session, self._adapter)

    async def drain(self, session: Session) -> None:
        return None

    def ended(self, session: Session, reason: str) -> None:
        return None

    # -- one utterance ----------------------------------------------------------------------------

    async def utterance(self, session: Session) -> UtteranceResult:
        audio = self._clips[next(self._next) % len(self._clips)]
        result = await run_utterance(
            session,
            self._adapter,
            audio,
            self._cfg.end_of_speech,
            final_timeout=self._cfg.final_timeout,
            on_lateness=self._send_lag.observe,
        )
        self._record(result)
        if result.transport_error is not None:
            # The session is gone: its supervisor classifies how (close code, reset, ...).
            raise result.transport_error
        return result

    def _record(self, r: UtteranceResult) -> None:
        self._utterances.labels(r.outcome).inc()
        end = r.speech_end_sent_ns
        if r.final_s is not None and end is not None:
            self._final.observe(end, end + int(r.final_s * 1e9))
        start = r.speech_start_sent_ns
        if r.first_partial_s is not None and start is not None:
            self._first_partial.observe(start, start + int(r.first_partial_s * 1e9))
        if r.wer is not None:
            self._wer.observe(r.wer)
        ok = r.outcome == "ok"
        self._metrics.set_success(ok)
        (self._log.debug if ok else self._log.warning)(
            "utterance",
            clip=r.clip_id,
            result=r.outcome,
            final_ms=None if r.final_s is None else round(r.final_s * 1e3, 1),
            first_partial_ms=None
            if r.first_partial_s is None
            else round(r.first_partial_s * 1e3, 1),
            wer=None if r.wer is None else round(r.wer, 3),
            rule=r.final_rule,
        )
        if not ok:
            self._metrics.status.error("utterance", r.outcome, r.final_text or "")

    # -- one-shot -------------------------------------------------------------------------------

    async def once(self) -> bool:
        """Connect, stream one utterance, print its timeline, close."""
        await self._load()
        try:
            session = await self.supervisor.connect()
        except ConnectError as exc:
            self._log.error(  # classified: its reason, not a traceback
                "connect failed", reason=exc.reason, phase=exc.phase, detail=exc.detail
            )
            return False
        try:
            result = await self.utterance(session)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            self._log.error(
                "the provider closed the session",
                close_code=rcvd.code if rcvd is not None else 1006,
                close_reason=session.redact(rcvd.reason) if rcvd is not None else None,
            )
            return False
        finally:
            with contextlib.suppress(Exception):
                await close_session(session, self._adapter)
            await session.ws.close()
        for line in result.describe():
            self._log.info("timeline", step=session.redact(line))
        return result.outcome == "ok"
