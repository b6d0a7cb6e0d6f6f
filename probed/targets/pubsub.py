"""Reference pub/sub (chat room) server with injectable delivery faults and recorded ground truth.

Fan-out probes are tested against it, and SREs point a probe at it to rehearse alerts. Protocol,
one JSON object per WebSocket text frame on ``/ws`` (or ``/``):

- ``{"type":"join","room":R}`` -> ``{"type":"joined","room":R}``; ``{"type":"leave","room":R}``
  -> ``{"type":"left","room":R}``. A join may carry ``"name"``: the subscriber's name in the
  ground truth (kept across reconnects); otherwise the connection is ``conn-<n>``.
- ``{"type":"publish","room":R,"id":X,...}`` -> ``{"type":"ack","id":X}`` to the publisher, and
  to every member of R (the publisher too only with ``echo_to_sender``) the publish with
  ``"type":"message"`` and ``"from":<publisher name>``, every other field kept.
- ``{"type":"ping","id":X}`` -> ``{"type":"pong","id":X}`` (an application heartbeat).
- Like many chat servers it insists on ``join`` first (``require_join``): anything else as a
  first message closes the session with ``join_close_code`` (4001). Other bad input is answered
  with ``{"type":"error","reason":...}`` and the session stays.
- Broken servers, for the probe's bad-input handling: ``answer_joins=False`` subscribes nobody and
  never answers a join (a subscription that is never acknowledged); ``broadcast=False`` sends
  each publish back to its publisher only (a server that echoes instead of fanning out).
- ``chatter_interval``: a fake user posts to every room with members that often (other room
  traffic a probe must ignore).

Faults apply to each delivery to each subscriber independently: ``delay`` +/- ``jitter``,
``drop`` (probability), ``duplicate`` (probability of a second copy), ``reorder`` (probability that
a delivery is held back until just after that subscriber's next one). What was actually done is
recorded per subscriber (``truth()``; ``GET /-/truth``), counted when a frame is written:
delivered, duplicated, dropped, reordered (written after a later publish of the same room),
undelivered (the session ended first). Faults can be changed live (``POST /-/fault``,
``/-/heal``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import json
import math
import random
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final, TypedDict

from aiohttp import WSMsgType, web

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

_MAX_FRAME: Final = 64 * 1024
# Ids kept per subscriber and category for tests to compare against; the counts are exact.
_REMEMBERED_IDS: Final = 10_000
_CHATTER_NAME: Final = "chatter"
_RATE_KEYS: Final = ("drop", "duplicate", "reorder")
_SECONDS_KEYS: Final = ("delay", "jitter", "reorder_hold")
_SWITCH_KEYS: Final = ("echo_to_sender", "answer_joins", "broadcast")
_FAULT_KEYS: Final = frozenset(
    {*_RATE_KEYS, *_SECONDS_KEYS, *_SWITCH_KEYS, "chatter_interval", "close", "reason"}
)


def _check_rate(name: str, value: float) -> None:
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability between 0 and 1")


def _check_close(code: int) -> None:
    if code not in (1000, 1001, 1011) and not 3000 <= code <= 4999:
        raise ValueError("close code must be 1000, 1001, 1011 or 3000-4999")


def _check_seconds(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0")


class TruthReport(TypedDict):
    delivered: int
    duplicated: int
    dropped: int
    reordered: int
    undelivered: int
    chatter: int
    delivered_ids: list[str]
    dropped_ids: list[str]
    duplicated_ids: list[str]
    reordered_ids: list[str]


@dataclass
class SubscriberTruth:
    """What the server did for one subscriber."""

    delivered: int = 0
    duplicated: int = 0
    dropped: int = 0
    reordered: int = 0
    undelivered: int = 0
    chatter: int = 0
    delivered_ids: deque[str] = field(default_factory=lambda: deque(maxlen=_REMEMBERED_IDS))
    dropped_ids: deque[str] = field(default_factory=lambda: deque(maxlen=_REMEMBERED_IDS))
    duplicated_ids: deque[str] = field(default_factory=lambda: deque(maxlen=_REMEMBERED_IDS))
    reordered_ids: deque[str] = field(default_factory=lambda: deque(maxlen=_REMEMBERED_IDS))
    # Highest publish sequence written per room: a lower one written later is a reorder.
    highest: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> TruthReport:
        return {
            "delivered": self.delivered,
            "duplicated": self.duplicated,
            "dropped": self.dropped,
            "reordered": self.reordered,
            "undelivered": self.undelivered,
            "chatter": self.chatter,
            "delivered_ids": list(self.delivered_ids),
            "dropped_ids": list(self.dropped_ids),
            "duplicated_ids": list(self.duplicated_ids),
            "reordered_ids": list(self.reordered_ids),
        }


@dataclass(frozen=True, slots=True)
class _Delivery:
    """One frame owed to one subscriber. ``seq`` orders publishes within a room."""

    text: str
    room: str
    seq: int
    ident: str
    twice: bool = False  # an injected duplicate follows the original
    chatter: bool = False


class _Session:
    """One accepted WebSocket, its rooms, and the frames it is owed (a heap by due time)."""

    def __init__(self, ws: web.WebSocketResponse, name: str) -> None:
        self.ws = ws
        self.name = name
        self.rooms: set[str] = set()
        self.joined_once = False
        self.closing = False
        self._due: list[tuple[float, int, _Delivery | str, bool]] = []
        self._order = itertools.count()
        self._held: list[_Delivery] = []
        self._held_since: float | None = None
        self._writing: _Delivery | None = None
        self._wake = asyncio.Event()

    def reply(self, message: dict[str, Any]) -> None:
        """A direct answer (ack, joined, error): written in order, no faults."""
        self._push(0.0, json.dumps(message), hold=False)

    def deliver(self, when: float, delivery: _Delivery, hold: bool = False) -> None:
        self._push(when, delivery, hold)

    def _push(self, when: float, item: _Delivery | str, hold: bool) -> None:
        heapq.heappush(self._due, (when, next(self._order), item, hold))
        self._wake.set()

    def owed(self) -> list[_Delivery]:
        pending = [item for _, _, item, _ in self._due if isinstance(item, _Delivery)]
        # A frame whose write was cut short by the session ending counts as not delivered.
        writing = [self._writing] if self._writing is not None else []
        return pending + self._held + writing

    async def send_due(self, target: PubSubTarget) -> None:
        with contextlib.suppress(ConnectionError):
            await self._send_due(target)
        # The session is closing; the reader side counts what was still owed.

    async def _send_due(self, target: PubSubTarget) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            now = loop.time()
            if self._held_since is not None and now - self._held_since >= target.reorder_hold:
                # Nothing came to overtake it: send it late but in order.
                await self._flush_held(target)
                continue
            wake_at: float | None = None
            if self._due:
                wake_at = self._due[0][0]
            if self._held_since is not None:
                flush_at = self._held_since + target.reorder_hold
                wake_at = flush_at if wake_at is None else min(wake_at, flush_at)
            if wake_at is None:
                await self._wake.wait()
                continue
            if wake_at > now:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wake_at - now):
                        await self._wake.wait()
                continue
            if not self._due:
                continue
            _, _, item, hold = heapq.heappop(self._due)
            if isinstance(item, str):
                await self.ws.send_str(item)
                continue
            if hold:
                self._held.append(item)
                if self._held_since is None:
                    self._held_since = now
                continue
            await self._write(target, item)
            if not item.chatter and self._held:
                await self._flush_held(target)

    async def _flush_held(self, target: PubSubTarget) -> None:
        self._held_since = None
        while self._held:
            await self._write(target, self._held.pop(0))

    async def _write(self, target: PubSubTarget, item: _Delivery) -> None:
        self._writing = item
        await self.ws.send_str(item.text)
        self._writing = None
        truth = target.truth_for(self.name)
        if item.chatter:
            truth.chatter += 1
            return
        truth.delivered += 1
        truth.delivered_ids.append(item.ident)
        if item.seq < truth.highest.get(item.room, -1):
            truth.reordered += 1
            truth.reordered_ids.append(item.ident)
        else:
            truth.highest[item.room] = item.seq
        if item.twice:
            # Right behind the original (held or not), so the copy is always the duplicate.
            await self.ws.send_str(item.text)
            truth.duplicated += 1
            truth.duplicated_ids.append(item.ident)


class PubSubTarget(HttpService):
    """Rooms with join/leave, publish acks and broadcast, with faults; see the module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        delay: float = 0.0,
        jitter: float = 0.0,
        drop: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        reorder_hold: float = 2.0,
        echo_to_sender: bool = False,
        answer_joins: bool = True,
        broadcast: bool = True,
        require_join: bool = True,
        join_close_code: int = 4001,
        chatter_interval: float | None = None,
        seed: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not 3000 <= join_close_code <= 4999:
            raise ValueError("join_close_code must be an application close code (3000-4999)")
        self._host = host
        self._tls = ssl_context is not None
        self._random = random.Random(seed)
        self.require_join = require_join
        self.join_close_code = join_close_code
        self.delay = self.jitter = self.drop = self.duplicate = self.reorder = 0.0
        self.reorder_hold = 2.0
        self.echo_to_sender = False
        self.answer_joins = True
        # Off: application pings go unanswered while everything else works (a half-dead server).
        self.answer_pings = True
        self.broadcast = True
        self.chatter_interval: float | None = None
        self._chatter_wake = asyncio.Event()
        self.set_faults(
            delay=delay,
            jitter=jitter,
            drop=drop,
            duplicate=duplicate,
            reorder=reorder,
            reorder_hold=reorder_hold,
            echo_to_sender=echo_to_sender,
            answer_joins=answer_joins,
            broadcast=broadcast,
            chatter_interval=chatter_interval,
        )
        app = web.Application()
        app.router.add_get("/", self._websocket)
        app.router.add_get("/ws", self._websocket)
        app.router.add_post("/-/fault", self._post_fault)
        app.router.add_post("/-/heal", self._post_heal)
        app.router.add_get("/-/status", self._get_status)
        app.router.add_get("/-/truth", self._get_truth)
        self._http = HttpServer(app, host, port, ssl_context)
        self._running = False
        self._sessions: set[_Session] = set()
        self._rooms: dict[str, set[_Session]] = {}
        self._seq: dict[str, int] = {}
        self._truth: dict[str, SubscriberTruth] = {}
        self._connections = itertools.count(1)
        self._chatter_ids = itertools.count()
        self._chatter_task: asyncio.Task[None] | None = None
        self._closers: set[asyncio.Task[bool]] = set()
        self.published = 0
        self.upgrades = 0
        self.close_codes: deque[int] = deque(maxlen=1000)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._http.start()
        self._running = True
        self._chatter_task = asyncio.create_task(self._chatter())

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        if self._chatter_task is not None:
            self._chatter_task.cancel()
            await asyncio.wait([self._chatter_task])
        self.close_all(1001, "server stopping")
        await asyncio.gather(*self._closers, return_exceptions=True)
        await self._http.stop()

    @property
    def url(self) -> str:
        return self.address("/ws", websocket=True)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def members(self, room: str) -> int:
        return len(self._rooms.get(room, ()))

    # -- faults and truth -----------------------------------------------------------------------

    def set_faults(
        self,
        *,
        delay: float | None = None,
        jitter: float | None = None,
        drop: float | None = None,
        duplicate: float | None = None,
        reorder: float | None = None,
        reorder_hold: float | None = None,
        echo_to_sender: bool | None = None,
        answer_joins: bool | None = None,
        broadcast: bool | None = None,
        chatter_interval: float | None = None,
    ) -> None:
        """Change the given faults (None leaves one as it is); all checked before any applies."""
        rates = {"drop": drop, "duplicate": duplicate, "reorder": reorder}
        seconds = {"delay": delay, "jitter": jitter, "reorder_hold": reorder_hold}
        for name, rate in rates.items():
            if rate is not None:
                _check_rate(name, rate)
        for name, value in seconds.items():
            if value is not None:
                _check_seconds(name, value)
        if chatter_interval is not None and (
            not math.isfinite(chatter_interval) or chatter_interval <= 0
        ):
            raise ValueError("chatter_interval must be a number of seconds > 0 (0 or null: off)")
        for name, value in (*rates.items(), *seconds.items()):
            if value is not None:
                setattr(self, name, value)
        switches = {
            "echo_to_sender": echo_to_sender,
            "answer_joins": answer_joins,
            "broadcast": broadcast,
        }
        for name, switch in switches.items():
            if switch is not None:
                setattr(self, name, switch)
        if chatter_interval is not None:
            self.chatter_interval = chatter_interval
            self._chatter_wake.set()

    def stop_chatter(self) -> None:
        self.chatter_interval = None
        self._chatter_wake.set()

    def heal(self) -> None:
        self.set_faults(
            delay=0, jitter=0, drop=0, duplicate=0, reorder=0, answer_joins=True, broadcast=True
        )
        self.stop_chatter()

    def faults(self) -> dict[str, object]:
        return {
            "delay": self.delay,
            "jitter": self.jitter,
            "drop": self.drop,
            "duplicate": self.duplicate,
            "reorder": self.reorder,
            "reorder_hold": self.reorder_hold,
            "echo_to_sender": self.echo_to_sender,
            "answer_joins": self.answer_joins,
            "broadcast": self.broadcast,
            "chatter_interval": self.chatter_interval,
        }

    def truth_for(self, name: str) -> SubscriberTruth:
        truth = self._truth.get(name)
        if truth is None:
            truth = self._truth[name] = SubscriberTruth()
        return truth

    def truth(self) -> dict[str, TruthReport]:
        """Per subscriber name: counts and (the latest) ids of what was done."""
        return {name: t.as_dict() for name, t in self._truth.items()}

    def close_all(self, code: int, reason: str = "") -> None:
        _check_close(code)
        for session in self._sessions:
            self._close(session, code, reason)

    def _close(self, session: _Session, code: int, reason: str) -> None:
        task = asyncio.create_task(session.ws.close(code=code, message=reason.encode()[:123]))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    # -- the protocol ---------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=_MAX_FRAME)
        if not ws.can_prepare(request):
            return web.Response(
                status=426, headers={"Upgrade": "websocket"}, text="WebSocket endpoint\n"
            )
        self.upgrades += 1
        await ws.prepare(request)
        session = _Session(ws, f"conn-{next(self._connections)}")
        self._sessions.add(session)
        sender = asyncio.create_task(session.send_due(self))
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self._on_text(session, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    session.reply({"type": "error", "reason": "binary"})
                elif msg.type is WSMsgType.ERROR:
                    break
        finally:
            sender.cancel()
            await asyncio.wait([sender])
            self._forget(session)
            if ws.close_code is not None:
                self.close_codes.append(ws.close_code)
        return ws

    def _forget(self, session: _Session) -> None:
        self._sessions.discard(session)
        for room in session.rooms:
            self._leave(session, room)
        owed = [d for d in session.owed() if not d.chatter]
        if owed:
            self.truth_for(session.name).undelivered += len(owed)

    def _leave(self, session: _Session, room: str) -> None:
        members = self._rooms.get(room)
        if members is not None:
            members.discard(session)
            if not members:
                del self._rooms[room]

    def _on_text(self, session: _Session, text: str) -> None:
        if session.closing:
            return
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            msg = None
        kind = msg.get("type") if isinstance(msg, dict) else None
        if self.require_join and not session.joined_once and kind != "join":
            session.closing = True
            self._close(session, self.join_close_code, "join first")
            return
        if not isinstance(msg, dict):
            session.reply({"type": "error", "reason": "not_json_object"})
            return
        room = msg.get("room")
        ident = msg.get("id")
        echo_id = {"id": ident} if "id" in msg else {}
        if kind == "ping":
            if self.answer_pings:
                session.reply({"type": "pong", **echo_id})
        elif not isinstance(room, str) or not room:
            session.reply({"type": "error", "reason": "room_required", **echo_id})
        elif kind == "join":
            self._join(session, room, msg.get("name"), echo_id)
        elif kind == "leave":
            session.rooms.discard(room)
            self._leave(session, room)
            session.reply({"type": "left", "room": room, **echo_id})
        elif kind == "publish":
            if not isinstance(ident, str | int) or isinstance(ident, bool):
                session.reply({"type": "error", "reason": "id_required"})
                return
            session.reply({"type": "ack", "id": ident})
            self._publish(
                session, room, str(ident), {**msg, "type": "message", "from": session.name}
            )
        else:
            session.reply({"type": "error", "reason": "unknown_type", **echo_id})

    def _join(self, session: _Session, room: str, name: object, echo_id: dict[str, Any]) -> None:
        if isinstance(name, str) and name and name != _CHATTER_NAME:
            session.name = name[:100]
        session.joined_once = True
        if not self.answer_joins:
            return  # swallowed: never subscribed, never answered
        session.rooms.add(room)
        self._rooms.setdefault(room, set()).add(session)
        session.reply({"type": "joined", "room": room, **echo_id})

    def _publish(self, sender: _Session, room: str, ident: str, message: dict[str, Any]) -> None:
        self.published += 1
        seq = self._seq[room] = self._seq.get(room, -1) + 1
        text = json.dumps(message)
        now = asyncio.get_running_loop().time()
        rand = self._random
        if self.broadcast:
            members = self._rooms.get(room, set())
            recipients = [m for m in members if m is not sender or self.echo_to_sender]
        else:
            recipients = [sender]
        for member in recipients:
            truth = self.truth_for(member.name)
            if rand.random() < self.drop:
                truth.dropped += 1
                truth.dropped_ids.append(ident)
                continue
            when = now + max(0.0, self.delay + rand.uniform(-self.jitter, self.jitter))
            twice = rand.random() < self.duplicate
            delivery = _Delivery(text, room, seq, ident, twice=twice)
            member.deliver(when, delivery, hold=rand.random() < self.reorder)

    async def _chatter(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._chatter_wake.clear()
            interval = self.chatter_interval
            if interval is None:
                await self._chatter_wake.wait()
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._chatter_wake.wait()
                    continue  # the interval changed: start over with the new one
            now = loop.time()
            for room, members in list(self._rooms.items()):
                n = next(self._chatter_ids)
                text = json.dumps(
                    {
                        "type": "message",
                        "room": room,
                        "id": f"chatter-{n}",
                        "from": _CHATTER_NAME,
                        "text": f"small talk {n}",
                    }
                )
                for member in members:
                    member.deliver(now, _Delivery(text, room, -1, f"chatter-{n}", chatter=True))

    # -- HTTP control ---------------------------------------------------------------------------

    def _status(self) -> web.Response:
        return web.json_response(
            {
                "sessions": self.sessions,
                "upgrades": self.upgrades,
                "published": self.published,
                "rooms": {room: len(members) for room, members in self._rooms.items()},
                "faults": self.faults(),
            }
        )

    async def _post_fault(self, request: web.Request) -> web.Response:
        body = await json_object(request, _FAULT_KEYS)
        close = get_int(body, "close", nullable=False) if "close" in body else None
        reason = body.get("reason", "")
        if not isinstance(reason, str) or ("reason" in body and close is None):
            bad_request("'reason' must be a string and comes with 'close'")
        changes: dict[str, Any] = {}
        for key in (*_RATE_KEYS, *_SECONDS_KEYS):
            if key in body:
                changes[key] = get_number(body, key, nullable=False)
        for key in _SWITCH_KEYS:
            if key in body:
                changes[key] = get_bool(body, key)
        stop_chatter = False
        if "chatter_interval" in body:
            value = get_number(body, "chatter_interval")
            stop_chatter = not value
            if value:
                changes["chatter_interval"] = value
        try:
            if close is not None:
                _check_close(close)
            self.set_faults(**changes)
        except ValueError as exc:
            bad_request(str(exc))
        if stop_chatter:
            self.stop_chatter()
        if close is not None:
            self.close_all(close, reason)
        return self._status()

    async def _post_heal(self, request: web.Request) -> web.Response:
        self.heal()
        return self._status()

    async def _get_status(self, request: web.Request) -> web.Response:
        return self._status()

    async def _get_truth(self, request: web.Request) -> web.Response:
        return web.json_response({"published": self.published, "subscribers": self.truth()})


# -- CLI ----------------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be a number of seconds >= 0")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be a probability between 0 and 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    for name, help_text in (
        ("delay", "added to every delivery"),
        ("jitter", "each delivery's delay varies uniformly by up to this much either way"),
    ):
        parser.add_argument(
            f"--{name}", type=_seconds, default=0.0, metavar="SECONDS", help=help_text
        )
    for name, help_text in (
        ("drop", "probability that a delivery to a subscriber is dropped"),
        ("duplicate", "probability that a delivery is sent twice"),
        ("reorder", "probability that a delivery is held until after the next one"),
    ):
        parser.add_argument(f"--{name}", type=_rate, default=0.0, metavar="P", help=help_text)
    parser.add_argument(
        "--echo-to-sender", action="store_true", help="broadcast to the publisher too"
    )
    parser.add_argument(
        "--no-require-join",
        dest="require_join",
        action="store_false",
        help="accept messages before a join (default: close with --join-close-code)",
    )
    parser.add_argument(
        "--ignore-joins",
        dest="answer_joins",
        action="store_false",
        help="never answer (or honour) a join: a subscription that is never acknowledged",
    )
    parser.add_argument(
        "--no-broadcast",
        dest="broadcast",
        action="store_false",
        help="send each publish back to its publisher only",
    )
    parser.add_argument("--join-close-code", type=int, default=4001, metavar="CODE")
    parser.add_argument(
        "--chatter-interval",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="a fake user posts to every room this often",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the fault dice")


async def serve(args: argparse.Namespace) -> None:
    async with PubSubTarget(
        args.host,
        args.port,
        delay=args.delay,
        jitter=args.jitter,
        drop=args.drop,
        duplicate=args.duplicate,
        reorder=args.reorder,
        echo_to_sender=args.echo_to_sender,
        answer_joins=args.answer_joins,
        broadcast=args.broadcast,
        require_join=args.require_join,
        join_close_code=args.join_close_code,
        chatter_interval=args.chatter_interval or None,
        seed=args.seed,
    ) as target:
        print(
            f"pubsub target listening on {target.url} (control: {target.control_url})", flush=True
        )
        await run_forever()
