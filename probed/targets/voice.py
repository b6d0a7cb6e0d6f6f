"""Voice-agent emulators: Gemini Live and OpenAI Realtime on loopback, for tests and drills.

`probed target voice --protocol gemini|openai`. Each speaks its provider's wire format
(voice-protocols.md sections 1 and 2): Gemini's setup / setupComplete with JSON in binary
frames and both key casings read, input transcription, modelTurn audio, toolCall, interrupted,
goAway and sessionResumptionUpdate; OpenAI's session.created / session.update, server VAD or
manual commit, transcription delta/completed, response audio deltas, function calls with
call ids, response.done cancelled on barge-in, session_expired at the session limit.

Behaviour: the turn ends at the endpointer's silence (or the client's flush); the answer starts
`delay` seconds after that (a tool call `tool_delay` after it, when the words ask for a
function); the answer is a tone streamed `speed` times faster than real time and assumed to
play in real time (like Gemini, the turn completes when playback would end); speech during
playback interrupts it after `yield_delay` (None: never). Simplification: OpenAI's response.done
also waits for the assumed playback, so that a barge-in can cancel it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import itertools
import json
import math
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from aiohttp import WSMsgType, web

from probed.targets.control import HttpServer, HttpService, run_forever
from probed.targets.voice_engine import (
    RATE,
    Endpointer,
    FixtureRecogniser,
    Recogniser,
    SphinxRecogniser,
    answer_audio,
    resample_24k_to_16k,
    tool_arguments,
)

Protocol = Literal["gemini", "openai"]
ToolFault = Literal["none", "wrong_name", "bad_args", "missing"]
GEMINI_PATHS = (
    "/ws/google.ai.generativelanguage.{v}.GenerativeService.BidiGenerateContent",
    "/ws/google.ai.generativelanguage.{v}.GenerativeService.BidiGenerateContentConstrained",
)
CHUNK_SECONDS = 0.1


@dataclass
class VoiceBehaviour:
    delay: float = 0.2
    tool_delay: float | None = None
    silence: float = 0.3  # Gemini endpointing silence unless the setup sets silenceDurationMs
    answer_seconds: float = 1.5
    lead_silence: float = 0.1
    speed: float = 4.0
    yield_delay: float | None = 0.05
    transcript_delay: float = 0.02
    session_limit: float | None = None
    go_away: bool = True
    go_away_lead: float = 1.0
    handle_interval: float = 0.3
    tool_fault: ToolFault = "none"
    finished_flag: bool = True
    # Hears and transcribes, never answers (a model that stopped responding).
    mute: bool = False


@dataclass
class _Conversation:
    """What survives a reconnect with a resumption handle."""

    id: str
    turns: int = 0
    open_socket: web.WebSocketResponse | None = None


@dataclass
class _Counters:
    sessions: int = 0
    resumed: int = 0
    refused: int = 0
    go_aways: int = 0
    interrupted: int = 0
    tool_calls: int = 0
    tool_responses: int = 0
    turns: int = 0
    transcripts: list[str] = field(default_factory=list)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class VoiceTarget(HttpService):
    def __init__(
        self,
        protocol: Protocol = "gemini",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        behaviour: VoiceBehaviour | None = None,
        recogniser: Recogniser | None = None,
        api_key: str | None = None,
        text_frames: bool = False,
    ) -> None:
        self.protocol = protocol
        self.behaviour = behaviour or VoiceBehaviour()
        self._recogniser = recogniser
        self.api_key = api_key
        self.text_frames = text_frames
        self._host = host
        app = web.Application()
        if protocol == "gemini":
            for path, version in itertools.product(GEMINI_PATHS, ("v1alpha", "v1beta")):
                app.router.add_get(path.format(v=version), self._websocket)
        else:
            app.router.add_get("/v1/realtime", self._websocket)
        self._http = HttpServer(app, host, port)
        self.counters = _Counters()
        self._conversations: dict[str, _Conversation] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sockets: set[web.WebSocketResponse] = set()

    @property
    def recogniser(self) -> Recogniser:
        if self._recogniser is None:
            from probed.audio.manifest import load_manifest

            self._recogniser = FixtureRecogniser(load_manifest().load_all())
        return self._recogniser

    async def start(self) -> None:
        _ = self.recogniser
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
        if self.protocol == "gemini":
            return self.address(GEMINI_PATHS[0].format(v="v1beta"), websocket=True)
        return self.address("/v1/realtime", websocket=True)

    def spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _authorised(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        offered = {
            request.headers.get("x-goog-api-key", ""),
            request.query.get("key", ""),
            request.query.get("access_token", ""),
            request.headers.get("Authorization", "").partition(" ")[2],
        }
        return self.api_key in offered

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if self.protocol == "openai" and not self._authorised(request):
            return web.json_response({"error": {"code": "invalid_api_key"}}, status=401)
        ws = web.WebSocketResponse(max_msg_size=16 << 20, autoping=True)
        await ws.prepare(request)
        self._sockets.add(ws)
        self.counters.sessions += 1
        session = _Session(self, ws)
        # The legacy beta interface names response events the old way.
        session.beta = request.headers.get("OpenAI-Beta", "").startswith("realtime")
        try:
            if self.protocol == "gemini" and not self._authorised(request):
                await ws.close(
                    code=1008, message=b"API key not valid. Please pass a valid API key."
                )
            else:
                await session.run()
        finally:
            await session.end()
            self._sockets.discard(ws)
        return ws


class _Session:
    def __init__(self, target: VoiceTarget, ws: web.WebSocketResponse) -> None:
        self.t = target
        self.b = target.behaviour
        self.ws = ws
        self.gemini = target.protocol == "gemini"
        self.endpointer = Endpointer(silence=self.b.silence)
        self.turn_audio: list[np.ndarray[Any, Any]] = []
        self.recent: collections.deque[np.ndarray[Any, Any]] = collections.deque(maxlen=15)
        self.audio_ms = 0.0
        self.auto_vad = True
        self.create_response = True
        self.tools: list[dict[str, Any]] = []
        self.conversation: _Conversation | None = None
        self.answer: asyncio.Task[None] | None = None
        self.playing_until = 0.0
        self.generating = False
        self.pending_call: str | None = None
        self.items = itertools.count(1)
        self.item_id = ""
        self.background: list[asyncio.Task[None]] = []
        self.closed = False
        self.unanswered = False
        self.beta = False

    # -- framing ----------------------------------------------------------------------------

    async def send(self, message: dict[str, object]) -> None:
        if self.closed or self.ws.closed:
            return
        text = json.dumps(message)
        # Gemini sends JSON in binary frames; OpenAI in text frames.
        if self.gemini and not self.t.text_frames:
            await self.ws.send_bytes(text.encode())
        else:
            await self.ws.send_str(text)

    async def close(self, code: int, reason: str) -> None:
        self.closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=reason.encode()[:123])

    async def end(self) -> None:
        self.closed = True
        for task in [*self.background, *([self.answer] if self.answer else [])]:
            task.cancel()
        if self.conversation is not None and self.conversation.open_socket is self.ws:
            self.conversation.open_socket = None

    # -- the session ------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        if self.b.session_limit is not None:
            self.background.append(self.t.spawn(self._limit(self.b.session_limit)))
        if not self.gemini:
            created = {"id": f"sess_{secrets.token_hex(6)}", "type": "realtime"}
            await self.send({"type": "session.created", "event_id": "event_0", "session": created})
        first = True
        async for msg in self.ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            raw = msg.data if msg.type == WSMsgType.TEXT else msg.data.decode("utf-8", "replace")
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                await self.close(1007, "Request contains an invalid argument.")
                return
            if not isinstance(obj, dict):
                await self.close(1007, "Request contains an invalid argument.")
                return
            if self.gemini:
                if first and "setup" not in obj:
                    await self.close(1007, "Request contains an invalid argument.")
                    return
                first = False
                await self._gemini(obj)
            else:
                await self._openai(obj)
            if self.closed:
                return

    async def _limit(self, limit: float) -> None:
        if self.gemini and self.b.go_away and limit > self.b.go_away_lead:
            await asyncio.sleep(limit - self.b.go_away_lead)
            self.t.counters.go_aways += 1
            await self.send({"goAway": {"timeLeft": f"{self.b.go_away_lead:g}s"}})
            await asyncio.sleep(self.b.go_away_lead)
        else:
            await asyncio.sleep(limit)
        if self.gemini:
            await self.close(1011, "Deadline expired before operation could complete.")
        else:
            await self.send({"type": "error", "event_id": "event_x", "error": {
                "type": "invalid_request_error", "code": "session_expired",
                "message": "Your session hit the maximum duration."}})  # fmt: skip
            await self.close(1001, "Your session hit the maximum duration.")

    # -- Gemini -------------------------------------------------------------------------------

    async def _gemini(self, obj: dict[str, Any]) -> None:
        if "setup" in obj:
            await self._gemini_setup(obj["setup"])
            return
        realtime = obj.get("realtimeInput", obj.get("realtime_input"))
        if isinstance(realtime, dict):
            if len(realtime) != 1:
                await self.close(1007, "Request contains an invalid argument.")
                return
            audio = realtime.get("audio")
            if isinstance(audio, dict):
                await self._audio(audio.get("data"), 16000)
            elif "activityStart" in realtime or "activity_start" in realtime:
                if self.auto_vad:
                    await self.close(1007, "Request contains an invalid argument.")
                    return
                self.turn_audio = []
                await self._heard_start()
            elif (
                "activityEnd" in realtime
                or "activity_end" in realtime
                or (
                    (realtime.get("audioStreamEnd") or realtime.get("audio_stream_end"))
                    and self.endpointer.force_end() is not None
                )
            ):
                await self._heard_end(forced=True)
            return
        response = obj.get("toolResponse", obj.get("tool_response"))
        if isinstance(response, dict):
            answers = response.get("functionResponses", response.get("function_responses"))
            for answer in answers if isinstance(answers, list) else []:
                if isinstance(answer, dict) and answer.get("id") == self.pending_call:
                    self.t.counters.tool_responses += 1
                    self.pending_call = None
                    self._start_answer(self.b.delay / 4, speak=True)
            return
        await self.close(1007, "Request contains an invalid argument.")

    async def _gemini_setup(self, setup: Any) -> None:
        if not isinstance(setup, dict) or not str(setup.get("model", "")).startswith(
            ("models/", "projects/")
        ):
            await self.close(1007, "Request contains an invalid argument.")
            return
        config = setup.get("realtimeInputConfig", setup.get("realtime_input_config")) or {}
        detection = config.get("automaticActivityDetection", {}) if isinstance(config, dict) else {}
        self.auto_vad = not (isinstance(detection, dict) and detection.get("disabled"))
        if isinstance(detection, dict) and isinstance(detection.get("silenceDurationMs"), int):
            self.endpointer = Endpointer(silence=detection["silenceDurationMs"] / 1000)
        for tool in setup.get("tools", []) or []:
            if isinstance(tool, dict):
                self.tools.extend(
                    d for d in tool.get("functionDeclarations", []) if isinstance(d, dict)
                )
        resumption = setup.get("sessionResumption", setup.get("session_resumption"))
        handle = resumption.get("handle") if isinstance(resumption, dict) else None
        conversations = self.t._conversations
        if handle:
            known = conversations.get(handle)
            if known is None:
                self.t.counters.refused += 1
                await self.close(1008, "Requested entity was not found.")
                return
            if known.open_socket is not None and not known.open_socket.closed:
                await self.close(1011, "Internal error occurred.")
                return
            self.conversation = known
            self.t.counters.resumed += 1
        else:
            self.conversation = _Conversation(secrets.token_hex(8))
        self.conversation.open_socket = self.ws
        await self.send({"setupComplete": {"sessionId": self.conversation.id}})
        if isinstance(resumption, dict):
            self.background.append(self.t.spawn(self._handles()))

    async def _handles(self) -> None:
        assert self.conversation is not None
        while not self.closed:
            await asyncio.sleep(self.b.handle_interval)
            busy = self.generating or self.pending_call is not None
            handle = "" if busy else f"h_{secrets.token_hex(8)}"
            if handle:
                self.t._conversations[handle] = self.conversation
            await self.send(
                {"sessionResumptionUpdate": {"newHandle": handle, "resumable": not busy}}
            )

    # -- OpenAI -------------------------------------------------------------------------------

    async def _openai(self, obj: dict[str, Any]) -> None:  # noqa: PLR0912  # one per event
        kind = obj.get("type")
        if kind == "session.update":
            session = _dict(obj.get("session"))
            audio_in = _dict(_dict(session.get("audio")).get("input"))
            detection = audio_in.get("turn_detection", session.get("turn_detection", "absent"))
            if detection is None:
                self.auto_vad = False
            elif isinstance(detection, dict):
                self.auto_vad = True
                self.create_response = bool(detection.get("create_response", True))
                ms = detection.get("silence_duration_ms")
                if isinstance(ms, int):
                    self.endpointer = Endpointer(silence=ms / 1000)
            tools = session.get("tools")
            if isinstance(tools, list):
                self.tools = [t for t in tools if isinstance(t, dict)]
            await self.send({"type": "session.updated", "event_id": "event_1", "session": session})
        elif kind == "input_audio_buffer.append":
            await self._audio(obj.get("audio"), 24000)
        elif kind == "input_audio_buffer.commit":
            if self.endpointer.force_end() is None and not self.turn_audio:
                await self._error("input_audio_buffer_commit_empty", "buffer too small")
                return
            await self._heard_end(forced=True, respond=False)
        elif kind == "response.create" and not self.b.mute:
            # After a tool's output the answer is spoken; after a commit the words decide.
            fresh = self.pending_call is None and self.unanswered
            self._start_answer(self.b.delay if fresh else self.b.delay / 4, speak=not fresh)
        elif kind == "conversation.item.create":
            item = _dict(obj.get("item"))
            if (
                item.get("type") == "function_call_output"
                and item.get("call_id") == self.pending_call
            ):
                self.t.counters.tool_responses += 1
                self.pending_call = None
            await self.send({"type": "conversation.item.created", "item": item})
        elif kind in ("input_audio_buffer.clear", "response.cancel", "response.create"):
            pass
        else:
            await self._error("invalid_event", f"unknown client event {str(kind)[:40]}")

    async def _error(self, code: str, message: str) -> None:
        error = {"type": "invalid_request_error", "code": code, "message": message}
        await self.send({"type": "error", "event_id": "event_e", "error": error})

    # -- hearing --------------------------------------------------------------------------

    async def _audio(self, data: object, rate: int) -> None:
        try:
            pcm = base64.b64decode(data if isinstance(data, str) else "", validate=True)
        except (binascii.Error, ValueError):
            await self.close(1007, "Request contains an invalid argument.")
            return
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2")
        self.audio_ms += 1000 * len(samples) / rate
        if rate != RATE:
            samples = resample_24k_to_16k(samples)
        if self.endpointer.in_speech or not self.auto_vad:
            self.turn_audio.append(samples)
        if not self.auto_vad:
            return
        # The onset is confirmed a little after it happened: keep what came just before.
        self.recent.append(samples)
        for boundary in self.endpointer.feed(samples):
            if boundary.kind == "start":
                self.turn_audio = list(self.recent)
                await self._heard_start()
            else:
                await self._heard_end(forced=False)

    async def _heard_start(self) -> None:
        loop = asyncio.get_running_loop()
        if not self.gemini:
            self.item_id = f"item_{next(self.items)}"
            await self.send({"type": "input_audio_buffer.speech_started",
                             "audio_start_ms": round(self.endpointer.last_loud * 1000),
                             "item_id": self.item_id})  # fmt: skip
        answering = self.answer is not None and not self.answer.done()
        if answering and loop.time() < self.playing_until and self.b.yield_delay is not None:
            assert self.answer is not None
            self.t.spawn(self._interrupt(self.answer, self.b.yield_delay))

    async def _interrupt(self, answer: asyncio.Task[None], after: float) -> None:
        await asyncio.sleep(after)
        if answer.done():
            return
        answer.cancel()
        self.generating = False
        self.t.counters.interrupted += 1
        if self.gemini:
            await self.send({"serverContent": {"interrupted": True}})
            await self.send({"serverContent": {"turnComplete": True}})
        else:
            await self.send({"type": "response.done", "response": {"id": "resp_x",
                             "status": "cancelled", "status_details": {"type": "cancelled",
                             "reason": "turn_detected"}}})  # fmt: skip

    async def _heard_end(self, *, forced: bool, respond: bool = True) -> None:
        audio = np.concatenate(self.turn_audio) if self.turn_audio else np.zeros(0, np.int16)
        self.turn_audio = []
        item_id = ""
        if not self.gemini:
            if not self.item_id:
                self.item_id = f"item_{next(self.items)}"
            # OpenAI's audio_end_ms includes the silence its VAD waited for.
            silence_ms = self.endpointer.silence_frames * 10
            end_ms = self.audio_ms if forced else self.endpointer.last_loud * 1000 + silence_ms
            await self.send({"type": "input_audio_buffer.speech_stopped",
                             "audio_end_ms": round(end_ms), "item_id": self.item_id})  # fmt: skip
            await self.send({"type": "input_audio_buffer.committed", "item_id": self.item_id,
                             "previous_item_id": None})  # fmt: skip
            item_id, self.item_id = self.item_id, ""
        self.t.counters.turns += 1
        if self.conversation is not None:
            self.conversation.turns += 1
        heard = self.t.spawn(self._recognise(audio, item_id))
        self.background.append(heard)
        self._heard = heard
        self._transcript: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.unanswered = True
        if respond and (self.gemini or self.create_response) and not self.b.mute:
            self._start_answer(self.b.delay, speak=False)

    async def _recognise(self, audio: np.ndarray[Any, Any], item: str) -> None:
        text = await self.t.recogniser.transcribe(audio)
        self.t.counters.transcripts.append(text)
        if not self._transcript.done():
            self._transcript.set_result(text)
        await asyncio.sleep(self.b.transcript_delay)
        if self.gemini:
            words = text.split()
            half = max(1, len(words) // 2)
            pieces = [" ".join(words[:half]), " ".join(words[half:])] if text else []
            for i, piece in enumerate(p for p in pieces if p):
                last = i == len(pieces) - 1
                fragment = {
                    "text": (" " if i else "") + piece,
                    "finished": last and self.b.finished_flag,
                }
                await self.send({"serverContent": {"inputTranscription": fragment}})
        else:
            prefix = "conversation.item.input_audio_transcription"
            await self.send(
                {"type": prefix + ".delta", "item_id": item, "content_index": 0, "delta": text}
            )
            await self.send({"type": prefix + ".completed", "item_id": item, "content_index": 0,
                             "transcript": text})  # fmt: skip

    # -- answering --------------------------------------------------------------------------

    def _start_answer(self, delay: float, *, speak: bool) -> None:
        # An agent that does not yield finishes its answer before it starts the next one.
        previous = self.answer if self.answer is not None and not self.answer.done() else None
        self.answer = self.t.spawn(self._answer(delay, speak=speak, after=previous))

    async def _answer(
        self, delay: float, *, speak: bool, after: asyncio.Task[None] | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        self.unanswered = False
        if after is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(after)
        due = loop.time() + delay
        transcript = await self._transcript if not speak else ""
        if not speak:
            call = self._tool_for(transcript)
            if call is not None:
                tool_due = (
                    loop.time() - (loop.time() - due) + ((self.b.tool_delay or delay) - delay)
                )
                await asyncio.sleep(max(0.0, tool_due - loop.time()))
                await self._call(*call)
                return
        await asyncio.sleep(max(0.0, due - loop.time()))
        await self._speak()

    def _tool_for(self, transcript: str) -> tuple[str, dict[str, object]] | None:
        if not self.tools or self.b.tool_fault == "missing":
            return None
        tool = self.tools[0]
        properties = _dict(_dict(tool.get("parameters")).get("properties"))
        arguments = tool_arguments(transcript, properties)
        if arguments is None:
            return None
        return str(tool.get("name", "")), arguments

    async def _call(self, name: str, arguments: dict[str, object]) -> None:
        if self.b.tool_fault == "wrong_name":
            name += "_v2"
        args_text = json.dumps(arguments)
        if self.b.tool_fault == "bad_args":
            args_text = args_text[:-1]  # truncated JSON
            arguments = {"arity": -1}
        call_id = f"call_{secrets.token_hex(6)}"
        self.pending_call = call_id
        self.t.counters.tool_calls += 1
        if self.gemini:
            await self.send(
                {"toolCall": {"functionCalls": [{"id": call_id, "name": name, "args": arguments}]}}
            )
            return
        item = f"item_{next(self.items)}"
        await self.send(
            {"type": "response.created", "response": {"id": "resp_t", "status": "in_progress"}}
        )
        await self.send({"type": "response.output_item.added", "output_index": 0, "item": {
            "id": item, "type": "function_call", "call_id": call_id, "name": name}})  # fmt: skip
        await self.send(
            {"type": "response.function_call_arguments.delta", "item_id": item, "delta": args_text}
        )
        await self.send({"type": "response.function_call_arguments.done", "item_id": item,
                         "call_id": call_id, "name": name, "arguments": args_text})  # fmt: skip
        await self.send(
            {"type": "response.done", "response": {"id": "resp_t", "status": "completed"}}
        )

    async def _speak(self) -> None:
        loop = asyncio.get_running_loop()
        pcm = answer_audio(self.b.answer_seconds, lead_silence=self.b.lead_silence)
        step = round(24000 * CHUNK_SECONDS) * 2
        chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
        start = loop.time()
        total = len(pcm) / 2 / 24000
        self.playing_until = start + total
        self.generating = True
        item = f"item_{next(self.items)}"
        if not self.gemini:
            await self.send(
                {"type": "response.created", "response": {"id": "resp_a", "status": "in_progress"}}
            )
        for i, chunk in enumerate(chunks):
            await asyncio.sleep(max(0.0, start + i * CHUNK_SECONDS / self.b.speed - loop.time()))
            data = base64.b64encode(chunk).decode()
            if self.gemini:
                part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": data}}
                await self.send({"serverContent": {"modelTurn": {"parts": [part]}}})
            else:
                name = "response.audio.delta" if self.beta else "response.output_audio.delta"
                await self.send({"type": name, "response_id": "resp_a",
                                 "item_id": item, "delta": data})  # fmt: skip
        if self.gemini:
            await self.send({"serverContent": {"outputTranscription": {"text": "Done."}}})
            await self.send({"serverContent": {"generationComplete": True}})
        else:
            await self.send({"type": "response.output_audio.done", "item_id": item})
            await self.send(
                {
                    "type": "response.output_audio_transcript.done",
                    "item_id": item,
                    "transcript": "Done.",
                }
            )
        self.generating = False
        # The server assumes real-time playback: the turn is over when the audio would be.
        await asyncio.sleep(max(0.0, self.playing_until - loop.time()))
        if self.gemini:
            await self.send(
                {"serverContent": {"turnComplete": True}, "usageMetadata": {"totalTokenCount": 1}}
            )
        else:
            await self.send(
                {"type": "response.done", "response": {"id": "resp_a", "status": "completed"}}
            )


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be a finite number of seconds >= 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", choices=("gemini", "openai"), default="gemini")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=_seconds, default=0.2, help="end of turn to answer")
    parser.add_argument("--tool-delay", type=_seconds, default=None)
    parser.add_argument("--yield-delay", type=_seconds, default=0.05)
    parser.add_argument("--never-yield", action="store_true")
    parser.add_argument("--session-limit", type=_seconds, default=None)
    parser.add_argument("--recogniser", choices=("sphinx", "fast"), default="sphinx")
    parser.add_argument("--api-key", default=None)


async def serve(args: argparse.Namespace) -> None:
    behaviour = VoiceBehaviour(
        delay=args.delay,
        tool_delay=args.tool_delay,
        yield_delay=None if args.never_yield else args.yield_delay,
        session_limit=args.session_limit,
    )
    recogniser: Recogniser | None = None
    if args.recogniser == "sphinx":
        sphinx = SphinxRecogniser()
        await sphinx.warm_up()
        recogniser = sphinx
    async with VoiceTarget(
        args.protocol, args.host, args.port, behaviour=behaviour, recogniser=recogniser,
        api_key=args.api_key,
    ) as target:  # fmt: skip
        print(
            f"voice target ({args.protocol}, {target.recogniser.label}) on {target.url}", flush=True
        )
        await run_forever()
