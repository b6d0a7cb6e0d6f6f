"""Reference WebSocket echo server whose failure modes can be switched on and off live.

The probe's echo round trip, close-code and reconnect metrics are tested against this server,
and SREs point a probe at it to rehearse alerts: every fault is reachable from Python and over
HTTP (``/-/fault``, ``/-/heal``, ``/-/status``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import math
import random
import ssl
from collections import deque

from aiohttp import WSMessage, WSMsgType, web

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

# Codes a peer may put on the wire (RFC 6455 7.4); anything else makes a conforming client
# fail the connection with a protocol error, which would hide the close we meant to show.
_SENDABLE_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})
_MAX_REASON_BYTES = 123  # a close frame's payload is capped at 125 bytes, 2 go to the code
_FAULT_KEYS = frozenset({"close", "reason", "pings", "echo", "upgrade_status", "retry_after"})


def _check_close(code: int, reason: str) -> None:
    if code not in _SENDABLE_CLOSE_CODES and not 3000 <= code <= 4999:
        raise ValueError(f"close code {code} cannot be sent: use 1000-1003, 1007-1014 or 3000-4999")
    if len(reason.encode()) > _MAX_REASON_BYTES:
        raise ValueError(f"close reason is longer than {_MAX_REASON_BYTES} bytes in UTF-8")


class _Session:
    """One accepted WebSocket and the replies it still owes.

    Replies wait in a heap keyed by due time and arrival order: with jitter they leave in due
    order (reordering, as a real jittery path would), without it strictly in arrival order. A
    single sender task per session keeps reading independent of writing without a task per
    message.
    """

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._due: list[tuple[float, int, WSMessage]] = []
        self._arrival = itertools.count()
        self._wake = asyncio.Event()

    def schedule(self, when: float, msg: WSMessage) -> None:
        heapq.heappush(self._due, (when, next(self._arrival), msg))
        self._wake.set()

    async def send_due(self, target: EchoTarget) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            if not self._due:
                await self._wake.wait()
                continue
            wait = self._due[0][0] - loop.time()
            if wait > 0:
                # Woken early when a message with an earlier due time arrives.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            _, _, msg = heapq.heappop(self._due)
            # Checked at send time too so that set_echo(False) also swallows pending replies.
            if not target.echo_enabled:
                continue
            try:
                if msg.type is WSMsgType.TEXT:
                    await self.ws.send_str(msg.data)
                else:
                    await self.ws.send_bytes(msg.data)
            except ConnectionError:
                return  # the session is closing; the reader side cleans up


class EchoTarget(HttpService):
    """Echoes every message after ``delay`` +/- ``jitter`` seconds, on ``/ws`` and ``/``.

    Faults take effect at once, for open sessions and new ones alike.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        delay: float = 0.0,
        jitter: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        for name, value in (("delay", delay), ("jitter", jitter)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number of seconds >= 0")
        self._host = host
        self._delay = delay
        self._jitter = jitter
        self._tls = ssl_context is not None
        app = web.Application()
        app.router.add_get("/", self._websocket)
        app.router.add_get("/ws", self._websocket)
        app.router.add_post("/-/fault", self._post_fault)
        app.router.add_post("/-/heal", self._post_heal)
        app.router.add_get("/-/status", self._get_status)
        self._http = HttpServer(app, host, port, ssl_context)
        self._running = False
        self._sessions: set[_Session] = set()
        self._closers: set[asyncio.Task[bool]] = set()
        self.upgrades = 0
        # Close codes the clients sent, latest last: tests check that probes say goodbye right.
        self.close_codes: deque[int] = deque(maxlen=1000)
        self._pings = True
        self._echo = True
        self._upgrade_status: int | None = None
        self._retry_after: float | None = None

    async def start(self) -> None:
        await self._http.start()
        self._running = True

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self.close_all(1001, "server stopping")
        await asyncio.gather(*self._closers, return_exceptions=True)
        await self._http.stop()

    @property
    def url(self) -> str:
        return self.address("/ws", websocket=True)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    @property
    def echo_enabled(self) -> bool:
        return self._echo

    def faults(self) -> dict[str, object]:
        return {
            "pings": self._pings,
            "echo": self._echo,
            "upgrade_status": self._upgrade_status,
            "retry_after": self._retry_after,
        }

    def close_all(self, code: int, reason: str = "") -> None:
        _check_close(code, reason)
        for session in self._sessions:
            task = asyncio.create_task(session.ws.close(code=code, message=reason.encode()))
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)

    def set_pings(self, answer: bool) -> None:
        self._pings = answer

    def set_echo(self, answer: bool) -> None:
        self._echo = answer

    def refuse_upgrades(self, status: int | None, retry_after: float | None = None) -> None:
        if status is not None and not 400 <= status <= 599:
            raise ValueError("upgrade refusal status must be between 400 and 599")
        if retry_after is not None and (not math.isfinite(retry_after) or retry_after < 0):
            raise ValueError("retry_after must be a finite number of seconds >= 0")
        self._upgrade_status = status
        self._retry_after = retry_after if status is not None else None

    def heal(self) -> None:
        self.set_pings(True)
        self.set_echo(True)
        self.refuse_upgrades(None)

    def _reply_delay(self) -> float:
        return max(0.0, self._delay + random.uniform(-self._jitter, self._jitter))

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        # Pings are answered by hand so that set_pings(False) can leave them hanging;
        # compression stays off so the measured round trip is the path, not deflate.
        ws = web.WebSocketResponse(autoping=False, compress=False)
        if not ws.can_prepare(request):
            return web.Response(
                status=426, headers={"Upgrade": "websocket"}, text="WebSocket endpoint\n"
            )
        self.upgrades += 1
        if self._upgrade_status is not None:
            headers = {}
            if self._retry_after is not None:
                headers["Retry-After"] = str(math.ceil(self._retry_after))
            return web.Response(
                status=self._upgrade_status, headers=headers, text="upgrade refused (fault)\n"
            )
        try:
            await ws.prepare(request)
        except ConnectionResetError:
            # The client gave up while we answered (a churning or timed-out probe): not an error.
            return ws
        loop = asyncio.get_running_loop()
        session = _Session(ws)
        self._sessions.add(session)
        sender = asyncio.create_task(session.send_due(self))
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    if self._echo:
                        session.schedule(loop.time() + self._reply_delay(), msg)
                elif msg.type is WSMsgType.PING:
                    if self._pings:
                        with contextlib.suppress(ConnectionError):
                            await ws.pong(msg.data)
                elif msg.type is WSMsgType.ERROR:
                    break
        finally:
            sender.cancel()
            # asyncio.wait, unlike awaiting the task, does not re-raise its cancellation here.
            await asyncio.wait([sender])
            self._sessions.discard(session)
            if ws.close_code is not None:
                self.close_codes.append(ws.close_code)
        return ws

    def _status(self) -> web.Response:
        return web.json_response(
            {"sessions": self.sessions, "upgrades": self.upgrades, "faults": self.faults()}
        )

    async def _post_fault(self, request: web.Request) -> web.Response:
        body = await json_object(request, _FAULT_KEYS)
        # Everything is validated before anything is applied: a 400 leaves the target as it was.
        close = get_int(body, "close", nullable=False) if "close" in body else None
        reason = ""
        if "reason" in body:
            if close is None:
                bad_request("'reason' is only meaningful together with 'close'")
            if not isinstance(body["reason"], str):
                bad_request("'reason' must be a string")
            reason = body["reason"]
        if close is not None:
            try:
                _check_close(close, reason)
            except ValueError as exc:
                bad_request(str(exc))
        pings = get_bool(body, "pings") if "pings" in body else self._pings
        echo = get_bool(body, "echo") if "echo" in body else self._echo
        status = (
            get_int(body, "upgrade_status") if "upgrade_status" in body else self._upgrade_status
        )
        retry = get_number(body, "retry_after") if "retry_after" in body else self._retry_after
        try:
            self.refuse_upgrades(status, retry)
        except ValueError as exc:
            bad_request(str(exc))
        self.set_pings(pings)
        self.set_echo(echo)
        if close is not None:
            self.close_all(close, reason)
        return self._status()

    async def _post_heal(self, request: web.Request) -> web.Response:
        self.heal()
        return self._status()

    async def _get_status(self, request: web.Request) -> web.Response:
        return self._status()


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
        "--jitter",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="each echo's delay varies uniformly by up to this much either way",
    )


async def serve(args: argparse.Namespace) -> None:
    async with EchoTarget(args.host, args.port, delay=args.delay, jitter=args.jitter) as target:
        print(f"echo target listening on {target.url} (control: {target.control_url})", flush=True)
        await run_forever()
