"""Reference WHIP endpoint: answers RFC 9725 and echoes the received audio back.

Two echo paths. ``decode`` is what an aiortc application does: receive track (jitter buffer and
decoder thread), then re-encode; its base latency is the far end of a typical WebRTC service.
``reflect`` sends each received RTP payload straight back without decoding, so what a probe
measures against it is the probe's own path plus the added ``delay``.

Faults for rehearsing failure handling: refuse with a status (503 + Retry-After), a malformed
or mangled answer, a 201 without Location, an answer whose peer never connects, echo off
(silence comes back), mute (no media at all) and garble (reflect mode: random payload bytes).
aiortc is imported lazily so that `probed --help` works without the webrtc extra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import fractions
import math
import os
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from probed.targets.control import (
    HttpServer,
    HttpService,
    bad_request,
    get_bool,
    get_int,
    get_number,
    json_object,
    run_forever,
)

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

_SDP = "application/sdp"
_PTIME = 0.020
_FAULT_KEYS = frozenset(
    {"echo", "mute", "garble", "answer", "refuse_status", "retry_after", "delay"}
)


class EchoMode(enum.Enum):
    DECODE = "decode"
    REFLECT = "reflect"
    NONE = "none"  # a plain WHIP ingest: answers recvonly and sends nothing back


class Answer(enum.Enum):
    """How POST is answered (fault modes besides OK)."""

    OK = "ok"
    MALFORMED = "malformed"  # 201 with a body that is not SDP
    NO_LOCATION = "no_location"  # 201 and a good answer, but no Location header
    MANGLED = "mangled"  # an SDP answer without its DTLS fingerprint and ICE credentials
    WRONG_FINGERPRINT = "wrong_fingerprint"  # ICE connects, DTLS cannot verify the peer
    NEVER_CONNECTS = "never_connects"  # a good answer whose peer is gone before ICE starts


@dataclass
class _Session:
    pc: RTCPeerConnection
    tasks: list[asyncio.Task[None]]


def _make_echo_track(target: WhipTarget) -> Any:
    import av
    import numpy as np
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

    class EchoTrack(MediaStreamTrack):
        """Plays what was queued once it is due; silence when nothing is queued.

        Items are decoded frames (decode mode) or encoded payloads (reflect mode). The next
        due item is sent the moment it is due, never on a tick of our own, so no quantisation
        is added; a gap of three packet times with nothing queued is filled with silence.
        """

        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.queue: deque[tuple[float, Any]] = deque()
            self.wake = asyncio.Event()
            self._pts = 0
            # The sender's encoder fixes its input format on the first frame; every frame we
            # hand it (silence included) is therefore s16 stereo 48 kHz, as Opus decodes to.
            self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=48_000)

        def put(self, due: float, item: Any) -> None:
            self.queue.append((due, item))
            self.wake.set()

        async def recv(self) -> Any:
            loop = asyncio.get_running_loop()
            # Silence fills a gap only once the far end has clearly stopped (or not started):
            # filling every late arrival would put extra packets into a healthy stream.
            silent_at = loop.time() + 3 * _PTIME
            while True:
                if self.readyState != "live":
                    raise MediaStreamError
                if target.muted:
                    self.queue.clear()
                    await asyncio.sleep(_PTIME)
                    continue
                if self.queue:
                    due, item = self.queue[0]
                    wait = due - loop.time()
                    if wait <= 0:
                        self.queue.popleft()
                        if not target.echo_enabled:
                            return self._silence()
                        return self._stamp(item)
                    await asyncio.sleep(wait)
                    continue
                self.wake.clear()
                wait = silent_at - loop.time()
                if wait <= 0:
                    return self._silence()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self.wake.wait()

        def _stamp(self, item: Any) -> Any:
            if isinstance(item, av.AudioFrame):
                if (item.format.name, item.layout.name, item.sample_rate) != (
                    "s16",
                    "stereo",
                    48_000,
                ):
                    converted = self._resampler.resample(item)
                    if not converted:
                        return self._silence()
                    item = converted[0]
                    for extra in reversed(converted[1:]):  # due now, ahead of anything queued
                        self.queue.appendleft((0.0, extra))
                item.pts = self._pts
                item.time_base = fractions.Fraction(1, item.sample_rate)
                self._pts += item.samples
                return item
            payload, samples, rate = item
            packet = av.Packet(payload)
            packet.pts = self._pts
            packet.time_base = fractions.Fraction(1, rate)
            self._pts += samples
            return packet

        def _silence(self) -> Any:
            n = round(48_000 * _PTIME)
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 2 * n), dtype=np.int16), format="s16", layout="stereo"
            )
            frame.sample_rate = 48_000
            frame.pts = self._pts
            frame.time_base = fractions.Fraction(1, 48_000)
            self._pts += n
            return frame

    return EchoTrack()


class WhipTarget(HttpService):
    """A WHIP endpoint at ``/whip``; sessions at ``/whip/session/<id>``.

    ``delay`` seconds are added to every echoed packet or frame. Faults change at once for new
    sessions (``answer``, ``refuse``) and open ones (``echo_enabled``, ``muted``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        delay: float = 0.0,
        mode: EchoMode = EchoMode.DECODE,
        token: str | None = None,
    ) -> None:
        if not math.isfinite(delay) or delay < 0:
            raise ValueError("delay must be a finite number of seconds >= 0")
        self._host = host
        self.delay = delay
        self.mode = mode
        self._token = token
        app = web.Application()
        app.router.add_route("OPTIONS", "/whip", self._options)
        app.router.add_post("/whip", self._post)
        app.router.add_route("*", "/whip/session/{id}", self._session)
        app.router.add_post("/-/fault", self._post_fault)
        app.router.add_post("/-/heal", self._post_heal)
        app.router.add_get("/-/status", self._get_status)
        self._http = HttpServer(app, host, port)
        self._sessions: dict[str, _Session] = {}
        self._closers: set[asyncio.Future[None]] = set()
        self.answer = Answer.OK
        self.refuse_status: int | None = None
        self.retry_after: int | None = None
        self.echo_enabled = True
        self.muted = False
        self.garble = False  # reflect mode: random bytes instead of each payload
        self.posts = 0
        self.deletes = 0

    async def start(self) -> None:
        await self._http.start()

    async def stop(self) -> None:
        await self.drop_sessions()
        if self._closers:
            await asyncio.wait(self._closers)
        await self._http.stop()

    @property
    def url(self) -> str:
        return self.address("/whip")

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def refuse(self, status: int | None, retry_after: int | None = None) -> None:
        if status is not None and not 400 <= status <= 599:
            raise ValueError("refusal status must be between 400 and 599")
        self.refuse_status = status
        self.retry_after = retry_after

    async def drop_sessions(self) -> None:
        """End every session from this side (a media server restarting under its peers)."""
        for session_id in list(self._sessions):
            await self._close_session(session_id)

    def heal(self) -> None:
        self.answer = Answer.OK
        self.refuse(None)
        self.echo_enabled = True
        self.muted = False
        self.garble = False

    # -- HTTP ---------------------------------------------------------------------------------

    async def _options(self, request: web.Request) -> web.Response:
        return web.Response(
            status=204,
            headers={"Accept-Post": _SDP, "Allow": "OPTIONS, POST"},
        )

    def _authorised(self, request: web.Request) -> bool:
        return self._token is None or request.headers.get("Authorization") == (
            f"Bearer {self._token}"
        )

    async def _post(self, request: web.Request) -> web.Response:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        self.posts += 1
        offer = await request.text()
        refusal = self._refusal(request, offer)
        if refusal is not None:
            return refusal
        pc = RTCPeerConnection()
        session_id = uuid.uuid4().hex
        session = _Session(pc, [])
        echo = _make_echo_track(self)
        self._sessions[session_id] = session

        @pc.on("track")
        def _on_track(track: Any) -> None:
            session.tasks.append(asyncio.ensure_future(self._pump(track, echo)))

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            # A client that vanished without DELETE is noticed by ICE consent freshness; its
            # session is dropped then, so a long-running target does not collect dead peers.
            if pc.connectionState in ("failed", "closed") and session_id in self._sessions:
                closer = asyncio.ensure_future(self._close_session(session_id))
                self._closers.add(closer)
                closer.add_done_callback(self._closers.discard)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            for transceiver in pc.getTransceivers():
                if transceiver.kind != "audio":
                    continue
                if self.mode is EchoMode.NONE:
                    transceiver.direction = "recvonly"
                else:
                    transceiver.sender.replaceTrack(echo)
                    transceiver.direction = "sendrecv"
                    if self.mode is EchoMode.REFLECT:
                        self._reflect(transceiver.receiver, echo, _clock_rates(offer))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            # aiortc rejects mangled SDP with assorted exception types; all are the client's.
            await self._close_session(session_id)
            return web.Response(status=400, text=f"cannot answer this offer: {exc}\n")
        answer = pc.localDescription.sdp
        if self.answer is Answer.MANGLED:
            await self._close_session(session_id)
            answer = "".join(
                line
                for line in answer.splitlines(keepends=True)
                if not line.startswith(("a=fingerprint", "a=ice-ufrag", "a=ice-pwd"))
            )
        if self.answer is Answer.WRONG_FINGERPRINT:
            answer = re.sub(
                r"(a=fingerprint:\S+ )([0-9A-Fa-f:]+)",
                lambda m: m.group(1) + ":".join(["00"] * len(m.group(2).split(":"))),
                answer,
            )
        if self.answer is Answer.NEVER_CONNECTS:
            await self._close_session(session_id)
        headers = {"ETag": f'"{session_id}"'}
        if self.answer is not Answer.NO_LOCATION:
            headers["Location"] = f"/whip/session/{session_id}"
        return web.Response(status=201, content_type=_SDP, headers=headers, text=answer)

    def _refusal(self, request: web.Request, offer: str) -> web.Response | None:
        """The answer to a POST that gets no session: bad request, or a fault switched on."""
        if not self._authorised(request):
            return web.Response(status=401, text="missing or wrong bearer token\n")
        if request.content_type != _SDP:
            return web.Response(status=415, headers={"Accept-Post": _SDP})
        if self.refuse_status is not None:
            headers = {"Retry-After": str(self.retry_after)} if self.retry_after else {}
            return web.Response(status=self.refuse_status, headers=headers, text="refused\n")
        if not offer.startswith("v=0") or "m=audio" not in offer:
            return web.Response(status=400, text="offer is not an SDP with an audio section\n")
        if self.answer is Answer.MALFORMED:
            return web.Response(
                status=201,
                content_type=_SDP,
                headers={"Location": "/whip/session/broken"},
                text="v=0\r\nthis is not an answer\r\n",
            )
        return None

    async def _session(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401)
        session_id = request.match_info["id"]
        if request.method == "DELETE":
            if session_id not in self._sessions:
                return web.Response(status=404)
            self.deletes += 1
            await self._close_session(session_id)
            return web.Response(status=200)
        if request.method == "GET":
            return web.Response(status=200 if session_id in self._sessions else 404)
        # Neither trickle nor ICE restart: a non-trickle client never sends PATCH.
        return web.Response(status=405, headers={"Allow": "GET, DELETE"})

    def _status(self) -> web.Response:
        return web.json_response(
            {
                "sessions": self.sessions,
                "posts": self.posts,
                "deletes": self.deletes,
                "mode": self.mode.value,
                "faults": {
                    "echo": self.echo_enabled,
                    "mute": self.muted,
                    "garble": self.garble,
                    "answer": self.answer.value,
                    "refuse_status": self.refuse_status,
                    "retry_after": self.retry_after,
                    "delay": self.delay,
                },
            }
        )

    async def _post_fault(self, request: web.Request) -> web.Response:
        body = await json_object(request, _FAULT_KEYS)
        # Validated in full before anything is applied: a 400 leaves the target as it was.
        answer = self.answer
        if "answer" in body:
            try:
                answer = Answer(body["answer"])
            except ValueError:
                bad_request(f"'answer' must be one of {[a.value for a in Answer]}")
        status = get_int(body, "refuse_status") if "refuse_status" in body else self.refuse_status
        retry = get_number(body, "retry_after") if "retry_after" in body else self.retry_after
        delay = get_number(body, "delay", nullable=False) if "delay" in body else self.delay
        echo = get_bool(body, "echo") if "echo" in body else self.echo_enabled
        mute = get_bool(body, "mute") if "mute" in body else self.muted
        garble = get_bool(body, "garble") if "garble" in body else self.garble
        try:
            self.refuse(status, None if retry is None else round(retry))
        except ValueError as exc:
            bad_request(str(exc))
        self.answer = answer
        self.delay = float(delay or 0.0)
        self.echo_enabled = echo
        self.muted = mute
        self.garble = garble
        return self._status()

    async def _post_heal(self, request: web.Request) -> web.Response:
        self.heal()
        return self._status()

    async def _get_status(self, request: web.Request) -> web.Response:
        return self._status()

    # -- media --------------------------------------------------------------------------------

    async def _pump(self, track: Any, echo: Any) -> None:
        """Decode mode: frames from the receive track are queued for ``delay`` later.

        In reflect mode the track is still drained (aiortc queues decoded frames without limit)
        and its frames are dropped: the reflected packets were already queued on arrival.
        """
        from aiortc.mediastreams import MediaStreamError

        loop = asyncio.get_running_loop()
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if self.mode is EchoMode.DECODE:
                    echo.put(loop.time() + self.delay, frame)

    def _reflect(self, receiver: Any, echo: Any, rates: dict[int, int]) -> None:
        original = receiver._handle_rtp_packet
        loop = asyncio.get_running_loop()
        last_ts: list[int] = []

        async def tapped(packet: Any, arrival_time_ms: int) -> None:
            # RTP timestamp steps give each payload's duration, in its codec's clock.
            rate = rates.get(packet.payload_type, 48_000)
            step = (packet.timestamp - last_ts[0]) & 0xFFFFFFFF if last_ts else round(rate * _PTIME)
            last_ts[:] = [packet.timestamp]
            if packet.payload and 0 < step <= rate:
                payload = packet.payload
                if self.garble:
                    payload = os.urandom(len(payload))
                echo.put(loop.time() + self.delay, (payload, step, rate))
            await original(packet, arrival_time_ms=arrival_time_ms)

        setattr(receiver, "_handle_rtp_packet", tapped)  # noqa: B010

    async def _close_session(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        for task in session.tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await session.pc.close()
        if session.tasks:
            await asyncio.wait(session.tasks)


def _clock_rates(offer: str) -> dict[int, int]:
    from aiortc.sdp import SessionDescription

    parsed = SessionDescription.parse(offer)
    return {
        c.payloadType: c.clockRate
        for m in parsed.media
        for c in m.rtp.codecs
        if c.payloadType is not None and c.clockRate
    }


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be a number of seconds >= 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument(
        "--delay", type=_seconds, default=0.0, metavar="SECONDS", help="added to every echo"
    )
    parser.add_argument(
        "--mode",
        choices=[m.value for m in EchoMode],
        default=EchoMode.DECODE.value,
        help=(
            "decode: aiortc receive track and re-encode; reflect: send RTP payloads back as"
            " is; none: plain WHIP ingest (recvonly), nothing comes back"
        ),
    )
    parser.add_argument(
        "--loopback-ice",
        action="store_true",
        help="offer only 127.0.0.1 ICE candidates (for a probe on this machine)",
    )


async def serve(args: argparse.Namespace) -> None:
    try:
        import aiortc  # noqa: F401
    except ImportError:
        raise SystemExit(
            "probed target whip needs the webrtc extra: pip install 'probed[webrtc]'"
        ) from None
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        if args.loopback_ice:
            from probed.webrtc.loopback import loopback_candidates

            stack.enter_context(loopback_candidates())
        target = await stack.enter_async_context(
            WhipTarget(args.host, args.port, delay=args.delay, mode=EchoMode(args.mode))
        )
        print(
            f"WHIP target listening on {target.url} (mode {args.mode}, control: "
            f"{target.control_url}, started in {time.monotonic() - started:.2f}s)",
            flush=True,
        )
        await run_forever()
