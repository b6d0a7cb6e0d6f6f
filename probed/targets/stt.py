"""Reference streaming speech-to-text servers: Deepgram v1, AssemblyAI v3 and a generic protocol.

Each speaks its provider's wire format (shared/reference/voice-protocols.md sections 3 and 4;
the generic one is the JSON protocol that probed.adapters.GenericProtocol describes by default),
endpoints on energy over the audio clock, and transcribes with a real recogniser (pocketsphinx)
or, in fast mode, returns the bundled fixture's manifest transcript without recognising anything
(for load tests with many streams; every transcript it sends says so in its model name).

Knobs: added processing delay (+/- jitter) before each final, a session time limit, and fault
injection at the end of each turn: close with a code, an error frame, never finalise, finalise
twice.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import soxr
from aiohttp import WSMsgType, web

from probed.audio.encoding import mulaw_decode
from probed.audio.manifest import load_manifest
from probed.targets.control import HttpServer, HttpService, run_forever
from probed.targets.stt_engine import (
    RATE,
    Endpointer,
    FastIndex,
    FastTranscriber,
    Signal,
    SphinxTranscriber,
    Transcriber,
)

SttProtocol = Literal["deepgram", "assemblyai", "generic"]
PROTOCOLS: tuple[SttProtocol, ...] = ("deepgram", "assemblyai", "generic")
PATHS: dict[SttProtocol, str] = {
    "deepgram": "/v1/listen",
    "assemblyai": "/v3/ws",
    "generic": "/v1/stt",
}
DEEPGRAM_IDLE = 10.0  # NET-0001: no audio and no KeepAlive for this long


@dataclass
class SttFaults:
    """Applied at the end of every turn, for open sessions and new ones alike."""

    close_code: int | None = None
    error_frame: bool = False
    never_finalise: bool = False
    finalise_twice: bool = False

    def __post_init__(self) -> None:
        code = self.close_code
        # Codes a peer may put on the wire (RFC 6455 7.4); others fail the client's protocol
        # check and would hide the close being rehearsed.
        if code is not None and not (
            code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999
        ):
            raise ValueError(
                f"close code {code} cannot be sent: use 1000-1003, 1007-1014 or 3000-4999"
            )


@dataclass
class _Turn:
    index: int
    start: float
    end: float | None = None
    finalised: bool = False


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def _flag(query: dict[str, str], key: str, default: bool) -> bool:
    value = query.get(key)
    if value is None:
        return default
    return value.lower() == "true"


def _millis(query: dict[str, str], key: str) -> float | None:
    value = query.get(key)
    if value is None or value.lower() == "false":
        return None
    try:
        ms = float(value)
    except ValueError:
        raise _Refused(400, f"{key} must be a number of milliseconds") from None
    if not math.isfinite(ms) or ms < 0:
        raise _Refused(400, f"{key} must be >= 0")
    return ms / 1000


@dataclass
class _Wire:
    """One session's negotiated wire details."""

    encoding: Literal["pcm16", "mulaw"] = "pcm16"
    rate: int = RATE
    interim: bool = True
    vad_events: bool = True
    endpointing: float | None = 0.5
    utterance_end: float | None = None
    format_turns: bool = False
    idle: float | None = None
    query: dict[str, str] = field(default_factory=dict)


class SttTarget(HttpService):
    def __init__(
        self,
        protocol: SttProtocol = "deepgram",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        fast: bool = False,
        delay: float = 0.0,
        jitter: float = 0.0,
        endpointing: float = 0.5,
        session_limit: float | None = None,
        api_key: str | None = None,
        faults: SttFaults | None = None,
        deepgram_idle: float = DEEPGRAM_IDLE,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; one of {PROTOCOLS}")
        for name, value in (("delay", delay), ("jitter", jitter), ("endpointing", endpointing)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number of seconds >= 0")
        self.protocol: SttProtocol = protocol
        self.fast = fast
        self.delay = delay
        self.jitter = jitter
        self.endpointing = endpointing
        self.session_limit = session_limit
        self.faults = faults or SttFaults()
        self.deepgram_idle = deepgram_idle
        self._api_key = api_key
        self._host = host
        self._index = FastIndex(load_manifest().load_all()) if fast else None
        app = web.Application()
        app.router.add_get(PATHS[protocol], self._websocket)
        app.router.add_get("/-/streams", self._streams)
        self._http = HttpServer(app, host, port)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sockets: set[web.WebSocketResponse] = set()
        self._sessions: set[_Session] = set()
        # What tests and operators look at.
        self.sessions = 0
        self.turns = 0
        self.finals_sent = 0
        self.close_codes: deque[int] = deque(maxlen=1000)
        self.last_query: dict[str, str] = {}

    @property
    def label(self) -> str:
        return "fast (manifest transcript, no recognition)" if self.fast else "pocketsphinx"

    async def start(self) -> None:
        await self._http.start()

    async def stop(self) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=1001, message=b"server stopping")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.stop()

    @property
    def url(self) -> str:
        return self.address(PATHS[self.protocol], websocket=True)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def final_delay(self) -> float:
        return max(0.0, self.delay + random.uniform(-self.jitter, self.jitter))

    def transcriber(self) -> Transcriber:
        if self._index is not None:
            return FastTranscriber(self._index)
        return SphinxTranscriber()

    # -- the upgrade -------------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        key = self._api_key
        if key is None:
            return True
        given = request.headers.get("Authorization", "")
        if self.protocol == "deepgram":
            return given in (f"Token {key}", f"Bearer {key}")
        if self.protocol == "assemblyai":
            return given == key or request.query.get("token") == key
        return given == f"Bearer {key}"

    def _negotiate(self, query: dict[str, str]) -> _Wire:
        wire = _Wire(endpointing=self.endpointing, query=query)
        if self.protocol == "deepgram":
            encoding = query.get("encoding")
            if encoding is not None:
                if encoding not in ("linear16", "mulaw"):
                    raise _Refused(400, f"this emulator takes linear16 or mulaw, not {encoding}")
                if "sample_rate" not in query:
                    raise _Refused(400, "sample_rate is required with encoding")
                wire.encoding = "pcm16" if encoding == "linear16" else "mulaw"
            wire.interim = _flag(query, "interim_results", False)
            wire.vad_events = _flag(query, "vad_events", False)
            # Deepgram's own default is 10 ms; "false" turns endpointing off.
            wire.endpointing = _millis(query, "endpointing") if "endpointing" in query else 0.01
            wire.utterance_end = _millis(query, "utterance_end_ms")
            wire.idle = self.deepgram_idle
        elif self.protocol == "assemblyai":
            if "speech_model" not in query:
                raise _Refused(400, "speech_model is required")
            encoding = query.get("encoding", "pcm_s16le")
            if encoding not in ("pcm_s16le", "pcm_mulaw"):
                raise _Refused(400, f"this emulator takes pcm_s16le or pcm_mulaw, not {encoding}")
            wire.encoding = "pcm16" if encoding == "pcm_s16le" else "mulaw"
            wire.format_turns = _flag(query, "format_turns", False)
            wire.endpointing = _millis(query, "max_turn_silence") or self.endpointing
            # Seconds, unlike the turn silences (milliseconds).
            idle = _millis(query, "inactivity_timeout")
            wire.idle = None if idle is None else idle * 1000
        rate = query.get("sample_rate", str(RATE))
        if not rate.isdigit() or not 8000 <= int(rate) <= 48000:
            raise _Refused(400, "sample_rate must be an integer between 8000 and 48000")
        wire.rate = int(rate)
        return wire

    async def _streams(self, request: web.Request) -> web.StreamResponse:
        """The emulator's own view of each open stream's pace: audio received against wall time."""
        return web.json_response(
            [
                {
                    "audio_seconds": s.audio_seconds,
                    "first_audio_ns": s.first_audio_ns,
                    "last_audio_ns": s.last_audio_ns,
                    "frames": s.audio_frames,
                }
                for s in self._sessions
                if s.first_audio_ns is not None
            ]
        )

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=4 * 1024 * 1024)
        if not ws.can_prepare(request):
            return web.Response(status=426, text="WebSocket endpoint\n")
        if not self._authorised(request):
            return web.Response(status=401, text="invalid credentials\n")
        query = dict(request.query)
        self.last_query = query
        try:
            wire = self._negotiate(query)
        except _Refused as exc:
            return web.Response(status=exc.status, text=f"{exc}\n")
        await ws.prepare(request)
        self.sessions += 1
        self._sockets.add(ws)
        session = _Session(self, ws, wire)
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
            await session.close()
            self._sockets.discard(ws)
            if ws.close_code is not None:
                self.close_codes.append(ws.close_code)
        return ws


class _Session:
    """One client stream: decode audio, endpoint, transcribe, answer in the protocol's words."""

    def __init__(self, target: SttTarget, ws: web.WebSocketResponse, wire: _Wire) -> None:
        self.target = target
        self.protocol = target.protocol
        self.ws = ws
        self.wire = wire
        silence = wire.utterance_end if wire.endpointing is None else wire.endpointing
        # With endpointing off and no utterance end, turns still end for the transcriber's sake,
        # but the client is never told (as Deepgram with endpointing=false behaves).
        self.endpointer = Endpointer(silence=silence if silence is not None else 0.5)
        self.transcriber = target.transcriber()
        self.resampler = (
            soxr.ResampleStream(wire.rate, RATE, 1, dtype="int16") if wire.rate != RATE else None
        )
        self.recent: deque[npt.NDArray[np.int16]] = deque()
        self.recent_samples = 0
        self.samples_in = 0
        self.turn: _Turn | None = None
        self.turn_count = 0
        self.id = str(uuid.uuid4())
        self.started = time.monotonic()
        self.audio_seconds = 0.0
        # perf_counter_ns (CLOCK_MONOTONIC: comparable with a client on this host) of the first
        # and latest audio frame, for the stream's pace as the server sees it.
        self.first_audio_ns: int | None = None
        self.last_audio_ns = 0
        self.audio_frames = 0
        self.closing = False
        self.finalising: set[asyncio.Task[None]] = set()

    # -- plumbing -------------------------------------------------------------------------------

    async def send(self, message: dict[str, object]) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps(message))

    async def close_with(self, code: int, reason: str) -> None:
        self.closing = True
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=code, message=reason.encode())

    async def close(self) -> None:
        await self.transcriber.close()

    async def run(self) -> None:
        await self.hello()
        limit = self.target.session_limit
        if limit is not None:
            self.target.spawn(self._expire(limit))
        while not self.closing:
            try:
                async with asyncio.timeout(self.wire.idle):
                    msg = await self.ws.receive()
            except TimeoutError:
                await self.idle_timeout()
                return
            if msg.type is WSMsgType.BINARY:
                await self.on_binary(msg.data)
            elif msg.type is WSMsgType.TEXT:
                await self.on_text(msg.data)
            else:
                return

    async def _expire(self, limit: float) -> None:
        await asyncio.sleep(limit)
        if self.protocol == "assemblyai":
            await self.send({"type": "Error", "error_code": 3008, "error": "Session expired"})
            await self.close_with(3008, "Session expired: maximum session duration exceeded")
        elif self.protocol == "deepgram":
            await self.close_with(1011, "session time limit reached")
        else:
            await self.send({"type": "error", "code": "session_limit", "message": "time is up"})
            await self.close_with(1001, "session time limit reached")

    async def idle_timeout(self) -> None:
        if self.protocol == "deepgram":
            await self.close_with(1011, "NET-0001")
        else:
            await self.send({"type": "Error", "error_code": 4031, "error": "Session idle too long"})
            await self.close_with(4031, "Session idle too long")

    # -- inbound ------------------------------------------------------------------------------

    async def on_binary(self, data: bytes) -> None:
        if self.protocol == "deepgram" and not data:
            # Deepgram's legacy close-stream signal.
            await self.finish_session()
            return
        await self.on_audio(data)

    async def on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            await self.bad_text()
            return
        kind = message.get("type")
        if self.protocol == "generic" and kind == "audio":
            try:
                data = base64.b64decode(str(message.get("audio", "")), validate=True)
            except (binascii.Error, ValueError):
                await self.send({"type": "error", "code": "bad_audio", "message": "not base64"})
                return
            await self.on_audio(data)
        elif kind in ("Finalize", "ForceEndpoint", "flush"):
            await self.flush()
        elif kind in ("CloseStream", "Terminate", "close"):
            await self.finish_session()
        elif kind in ("KeepAlive", "keepalive", "UpdateConfiguration"):
            return
        elif self.protocol == "generic":
            await self.send({"type": "error", "code": "unknown_type", "message": "unknown type"})

    async def bad_text(self) -> None:
        if self.protocol == "deepgram":
            await self.close_with(1008, "invalid control message")
        elif self.protocol == "assemblyai":
            await self.close_with(4100, "Invalid JSON")
        else:
            await self.send({"type": "error", "code": "bad_json", "message": "not a JSON object"})

    def decode(self, data: bytes) -> npt.NDArray[np.int16]:
        if self.wire.encoding == "mulaw":
            samples = mulaw_decode(data)
        else:
            samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.int16)
        if self.resampler is not None:
            samples = np.asarray(self.resampler.resample_chunk(samples), dtype=np.int16)
        return samples

    async def on_audio(self, data: bytes) -> None:
        self.last_audio_ns = time.perf_counter_ns()
        if self.first_audio_ns is None:
            self.first_audio_ns = self.last_audio_ns
        self.audio_frames += 1
        samples = self.decode(data)
        self.audio_seconds += len(samples) / RATE
        self.recent.append(samples)
        self.recent_samples += len(samples)
        self.samples_in += len(samples)
        while self.recent and self.recent_samples - len(self.recent[0]) > RATE:
            self.recent_samples -= len(self.recent.popleft())
        was_in_turn = self.turn is not None and self.turn.end is None
        signals = self.endpointer.feed(samples)
        if was_in_turn:
            await self.transcriber.feed(samples)
        for signal in signals:
            await self.on_signal(signal)

    def _pre_roll(self, start: float) -> npt.NDArray[np.int16]:
        """Audio from just before `start` up to now, from the recent-audio buffer."""
        if not self.recent:
            return np.zeros(0, dtype=np.int16)
        audio = np.concatenate(list(self.recent))
        back = self.samples_in / RATE - max(0.0, start - self.transcriber.pre_roll)
        return audio[-min(len(audio), round(back * RATE)) :]

    async def on_signal(self, signal: Signal) -> None:
        if signal.kind == "start":
            self.turn_count += 1
            self.target.turns += 1
            self.turn = _Turn(self.turn_count, signal.offset)
            self.transcriber.at(signal.offset, self.endpointer.position)
            await self.transcriber.begin()
            await self.transcriber.feed(self._pre_roll(signal.offset))
            if self.protocol == "deepgram" and self.wire.vad_events:
                await self.send(
                    {"type": "SpeechStarted", "channel": [0], "timestamp": signal.offset}
                )
            elif self.protocol == "generic":
                await self.send({"type": "speech_started", "offset": signal.offset})
        elif signal.kind == "partial" and self.turn is not None:
            self.target.spawn(self.partial(self.turn))
        elif signal.kind == "end" and self.turn is not None and self.turn.end is None:
            self.turn.end = signal.offset
            self.finalise_later(self.turn, forced=False)

    def finalise_later(self, turn: _Turn, *, forced: bool) -> None:
        """Finalise in the background, as a provider does: the session keeps reading audio."""
        task = self.target.spawn(self.finalise(turn, forced=forced))
        self.finalising.add(task)
        task.add_done_callback(self.finalising.discard)

    async def flush(self) -> None:
        signal = self.endpointer.force_end()
        if signal is not None and self.turn is not None and self.turn.end is None:
            self.turn.end = self.endpointer.position
            self.finalise_later(self.turn, forced=True)
        elif self.protocol == "deepgram":
            # Nothing buffered: Deepgram still answers a Finalize, with an empty result.
            await self.send(self.deepgram_results("", 0.0, 0.0, final=True, from_finalize=True))

    async def finish_session(self) -> None:
        # Finals still being prepared go out before the session's closing message.
        await asyncio.gather(*self.finalising, return_exceptions=True)
        if self.turn is not None and self.turn.end is None:
            self.endpointer.force_end()
            self.turn.end = self.endpointer.position
            await self.finalise(self.turn, forced=True)
        if self.protocol == "deepgram":
            await self.send(
                {
                    "type": "Metadata",
                    "request_id": self.id,
                    "duration": round(self.audio_seconds, 3),
                    "channels": 1,
                }
            )
        elif self.protocol == "assemblyai":
            await self.send(
                {
                    "type": "Termination",
                    "audio_duration_seconds": round(self.audio_seconds),
                    "session_duration_seconds": round(time.monotonic() - self.started),
                }
            )
        else:
            await self.send({"type": "closed"})
        await self.close_with(1000, "")

    # -- outbound -----------------------------------------------------------------------------

    async def partial(self, turn: _Turn) -> None:
        self.transcriber.at(turn.start, self.endpointer.position)
        text = await self.transcriber.partial()
        if not text or turn.end is not None or self.turn is not turn:
            return
        position = self.endpointer.position
        if self.protocol == "deepgram":
            if self.wire.interim:
                await self.send(self.deepgram_results(text, turn.start, position, final=False))
        elif self.protocol == "assemblyai":
            await self.send(self.assemblyai_turn(text, turn, end_of_turn=False))
        else:
            await self.send({"type": "partial", "text": text})

    async def finalise(self, turn: _Turn, *, forced: bool) -> None:
        assert turn.end is not None
        self.transcriber.at(turn.start, turn.end)
        text = await self.transcriber.finish()
        delay = self.target.final_delay()
        if delay:
            await asyncio.sleep(delay)
        if turn.finalised or self.ws.closed:
            return
        turn.finalised = True
        faults = self.target.faults
        if faults.close_code is not None:
            await self.close_with(faults.close_code, "fault injected by the emulator")
            return
        if faults.error_frame:
            await self.send(self.error_frame())
            return
        if faults.never_finalise:
            return
        for _ in range(2 if faults.finalise_twice else 1):
            await self.send_final(text, turn, forced=forced)

    async def send_final(self, text: str, turn: _Turn, *, forced: bool) -> None:
        assert turn.end is not None
        self.target.finals_sent += 1
        if self.protocol == "deepgram":
            if forced:
                await self.send(
                    self.deepgram_results(
                        text, turn.start, turn.end, final=True, from_finalize=True
                    )
                )
            elif self.wire.endpointing is not None:
                await self.send(
                    self.deepgram_results(text, turn.start, turn.end, final=True, speech_final=True)
                )
            else:
                await self.send(self.deepgram_results(text, turn.start, turn.end, final=True))
                if self.wire.utterance_end is not None:
                    await self.send(
                        {
                            "type": "UtteranceEnd",
                            "channel": [0, 1],
                            "last_word_end": round(turn.end, 3),
                        }
                    )
        elif self.protocol == "assemblyai":
            await self.send(self.assemblyai_turn(text, turn, end_of_turn=True))
            if self.wire.format_turns:
                formatted = text[:1].upper() + text[1:] + "." if text else ""
                await self.send(
                    self.assemblyai_turn(formatted, turn, end_of_turn=True, formatted=True)
                )
        else:
            await self.send({"type": "final", "text": text, "start": turn.start, "end": turn.end})

    def error_frame(self) -> dict[str, object]:
        if self.protocol == "deepgram":
            return {"type": "Error", "err_code": "INJECTED", "description": "fault injected"}
        if self.protocol == "assemblyai":
            return {"type": "Error", "error_code": 3005, "error": "fault injected"}
        return {"type": "error", "code": "injected", "message": "fault injected"}

    def _words(self, text: str, start: float, end: float) -> list[tuple[str, float, float]]:
        parts = text.split()
        if not parts:
            return []
        step = max(end - start, 0.01) / len(parts)
        return [(w, start + i * step, start + (i + 1) * step) for i, w in enumerate(parts)]

    def deepgram_results(
        self,
        text: str,
        start: float,
        end: float,
        *,
        final: bool,
        speech_final: bool = False,
        from_finalize: bool = False,
    ) -> dict[str, object]:
        words = [
            {
                "word": w,
                "start": round(a, 3),
                "end": round(b, 3),
                "confidence": 0.9,
                "punctuated_word": w,
            }
            for w, a, b in self._words(text, start, end)
        ]
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(max(0.0, end - start), 3),
            "start": round(start, 3),
            "is_final": final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": text, "confidence": 0.9, "words": words}]},
            "metadata": {
                "request_id": self.id,
                "model_uuid": "00000000-0000-0000-0000-000000000000",
                "model_info": {
                    "name": f"probed-emulator {self.target.label}",
                    "version": "0",
                    "arch": "emulator",
                },
            },
        }

    def assemblyai_turn(
        self, text: str, turn: _Turn, *, end_of_turn: bool, formatted: bool = False
    ) -> dict[str, object]:
        end = turn.end if turn.end is not None else self.endpointer.position
        words = [
            {
                "start": round(a * 1000),
                "end": round(b * 1000),
                "text": w,
                "confidence": 0.9,
                "word_is_final": end_of_turn,
            }
            for w, a, b in self._words(text, turn.start, end)
        ]
        return {
            "type": "Turn",
            "turn_order": turn.index - 1,
            "turn_is_formatted": formatted,
            "end_of_turn": end_of_turn,
            "transcript": text if end_of_turn else "",
            "end_of_turn_confidence": 0.9 if end_of_turn else 0.1,
            "utterance": text if end_of_turn else "",
            "words": words,
        }

    async def hello(self) -> None:
        if self.protocol == "assemblyai":
            expires = int(time.time() + (self.target.session_limit or 3 * 3600))
            await self.send(
                {
                    "type": "Begin",
                    "id": self.id,
                    "expires_at": expires,
                    "configuration": {"model": self.target.label},
                }
            )
        elif self.protocol == "generic":
            await self.send({"type": "ready", "session": self.id, "model": self.target.label})


# -- command line -------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be a number of seconds >= 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", choices=PROTOCOLS, default="deepgram")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="no recognition: endpoint only and return the bundled fixture's manifest transcript",
    )
    parser.add_argument(
        "--delay",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="added before every final transcript",
    )
    parser.add_argument(
        "--jitter",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="each final's delay varies uniformly by up to this much",
    )
    parser.add_argument(
        "--endpointing",
        type=_seconds,
        default=0.5,
        metavar="SECONDS",
        help="silence that ends a turn when the client does not set it",
    )
    parser.add_argument("--session-limit", type=_seconds, default=None, metavar="SECONDS")
    parser.add_argument("--api-key", default=None, help="require this key (as each provider does)")
    fault = parser.add_argument_group("faults, applied at the end of every turn")
    fault.add_argument("--close-code", type=int, default=None, help="close with this code")
    fault.add_argument("--error-frame", action="store_true", help="send an error frame instead")
    fault.add_argument("--never-finalise", action="store_true")
    fault.add_argument("--finalise-twice", action="store_true")


async def serve(args: argparse.Namespace) -> None:
    faults = SttFaults(
        close_code=args.close_code,
        error_frame=args.error_frame,
        never_finalise=args.never_finalise,
        finalise_twice=args.finalise_twice,
    )
    async with SttTarget(
        args.protocol,
        args.host,
        args.port,
        fast=args.fast,
        delay=args.delay,
        jitter=args.jitter,
        endpointing=args.endpointing,
        session_limit=args.session_limit,
        api_key=args.api_key,
        faults=faults,
    ) as target:
        print(f"stt target ({args.protocol}, {target.label}) listening on {target.url}", flush=True)
        await run_forever()
