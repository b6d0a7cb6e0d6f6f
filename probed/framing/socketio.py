"""Socket.IO v4 over the Engine.IO v4 WebSocket transport, sans I/O.

Wire format (one Engine.IO packet per WebSocket text frame):

- Engine.IO: ``0{json}`` open (sid, pingInterval and pingTimeout in ms), ``1`` close,
  ``2`` ping from the server (answer ``3`` at once), ``4<socket.io packet>`` message, ``6`` noop.
- Socket.IO packet: ``<type>[/namespace,][ack id][json]``, types ``0`` connect (``40{"sid":..}``
  from the server), ``1`` disconnect, ``2`` event (``["name", args...]``), ``3`` ack
  (``43<id>[args...]``), ``4`` connect_error (``44{"message":..}``); ``5``/``6`` carry binary
  attachments, which this framing does not support and reports as invalid.

In Engine.IO v4 the server pings and the client only answers; a server that stops pinging for
pingInterval + pingTimeout is gone (the HeartbeatPlan's ``server_silence_limit``).
"""

from __future__ import annotations

import json
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from probed.framing.events import (
    JSON,
    Ack,
    Closed,
    Event,
    Heartbeat,
    HeartbeatPlan,
    Invalid,
    Message,
    Opened,
    Ready,
    Rejected,
    Send,
    SetupStep,
    bounded_detail,
)
from probed.matching import DEFAULT_MAX_BYTES, DEFAULT_MAX_DEPTH, DecodeError, decode_json

_MAX_ACK_DIGITS: Final = 15
_PONG: Final = Send("3")
_SERVER_PING: Final = Heartbeat("server_ping")
_UNKNOWN: Final = Invalid("unknown_packet")
# Engine.IO packets other than open and message: what each one means for the session.
_ENGINE_CONTROL: Final[dict[str, tuple[Event, ...]]] = {
    "1": (Closed("server_close"),),
    "2": (_PONG, _SERVER_PING),
    "3": (Invalid("unexpected_pong"),),  # v4 servers ping, clients only answer
    "6": (),
}


def socketio_url(base: str, path: str = "/socket.io/") -> str:
    """The WebSocket URL for a Socket.IO server at ``base`` (http(s) or ws(s), any path kept
    only if ``path`` is empty), with the Engine.IO v4 query that skips HTTP long-polling."""
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = "EIO=4&transport=websocket"
    if parts.query:
        query = f"{parts.query}&{query}"
    return urlunsplit((scheme, parts.netloc, path or parts.path, query, ""))


def _milliseconds(value: JSON) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e9


def _payload(args: list[JSON]) -> JSON:
    if not args:
        return None
    return args[0] if len(args) == 1 else args


class SocketIOFraming:
    """One Socket.IO client session on one namespace: a new instance for every connection, since
    it holds that session's heartbeat terms and ack ids."""

    def __init__(
        self,
        namespace: str = "/",
        auth_json: str | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if not namespace.startswith("/") or "," in namespace:
            raise ValueError("namespace must start with '/' and contain no ','")
        if auth_json is not None:
            auth = json.loads(auth_json)
            if not isinstance(auth, dict):
                raise ValueError("Socket.IO auth must be a JSON object")
        self.namespace = namespace
        self._auth = auth_json or ""
        # The prefix every packet for a non-default namespace carries, e.g. "/chat,".
        self._nsp_prefix = "" if namespace == "/" else f"{namespace},"
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._next_ack = 0
        self.ping_interval: float | None = None
        self.ping_timeout: float | None = None
        self.ready = False

    # -- setup and heartbeat ------------------------------------------------------------------

    def connect_frame(self) -> str:
        return f"40{self._nsp_prefix}{self._auth}"

    def setup_steps(self) -> tuple[SetupStep, ...]:
        return (
            SetupStep("engineio_open", (), Opened),
            SetupStep("namespace_connect", (self.connect_frame(),), Ready),
        )

    @property
    def heartbeat(self) -> HeartbeatPlan:
        limit = None
        if self.ping_interval is not None and self.ping_timeout is not None:
            limit = self.ping_interval + self.ping_timeout
        return HeartbeatPlan(client_ping=None, server_silence_limit=limit)

    # -- outbound -------------------------------------------------------------------------------

    def emit(
        self, event: str, data_json: str | None = None, *, ack: bool = False
    ) -> tuple[str, int | None]:
        """The frame for ``event`` with one argument given as JSON text, and its ack id if asked.

        The caller passes JSON it rendered itself (a template); it is inserted, not re-parsed.
        """
        ack_id: int | None = None
        ident = ""
        if ack:
            ack_id = self._next_ack
            self._next_ack += 1
            ident = str(ack_id)
        args = json.dumps(event) if data_json is None else f"{json.dumps(event)},{data_json}"
        return f"42{self._nsp_prefix}{ident}[{args}]", ack_id

    def answer_ack(self, ack_id: int, data_json: str | None = None) -> str:
        return f"43{self._nsp_prefix}{ack_id}[{data_json or ''}]"

    def disconnect_frame(self) -> str:
        return f"41{self._nsp_prefix}"

    # -- inbound --------------------------------------------------------------------------------

    def receive(self, frame: str | bytes) -> list[Event]:
        if isinstance(frame, bytes):
            return [Invalid("binary_frame")]
        if len(frame) > self._max_bytes:
            return [Invalid("too_large")]
        if not frame:
            return [Invalid("empty")]
        kind, body = frame[0], frame[1:]
        if kind == "4":
            return [self._socketio(body)]
        if kind == "0":
            return [self._open(body)]
        return list(_ENGINE_CONTROL.get(kind, (_UNKNOWN,)))

    def _decode(self, text: str) -> JSON | Invalid:
        try:
            return decode_json(text, max_bytes=self._max_bytes, max_depth=self._max_depth)
        except DecodeError as exc:
            return Invalid(exc.reason)

    def _open(self, body: str) -> Event:
        info = self._decode(body)
        if isinstance(info, Invalid):
            return info
        if not isinstance(info, dict):
            return Invalid("bad_open")
        interval: JSON = info.get("pingInterval")
        timeout: JSON = info.get("pingTimeout")
        if not (_milliseconds(interval) and _milliseconds(timeout)):
            return Invalid("bad_open")
        sid = info.get("sid")
        self.ping_interval = float(interval) / 1000
        self.ping_timeout = float(timeout) / 1000
        return Opened(sid if isinstance(sid, str) else None, self.ping_interval, self.ping_timeout)

    # One return per way a packet can be wrong or right reads better than nested branches.
    def _socketio(self, packet: str) -> Event:  # noqa: PLR0911, PLR0912
        if not packet:
            return Invalid("empty")
        kind, rest = packet[0], packet[1:]
        if kind in "56":
            return Invalid("binary_unsupported")
        if kind not in "01234":
            return Invalid("unknown_packet")
        if rest.startswith("/"):
            nsp, _, rest = rest.partition(",")
            if nsp != self.namespace:
                return Invalid("other_namespace")
        elif self.namespace != "/":
            return Invalid("other_namespace")
        digits = 0
        while digits < len(rest) and rest[digits] in "0123456789":
            digits += 1
        if digits > _MAX_ACK_DIGITS:
            return Invalid("bad_ack_id")
        ack_id = int(rest[:digits]) if digits else None
        data: JSON = None
        if rest[digits:]:
            data = self._decode(rest[digits:])
            if isinstance(data, Invalid):
                return data
        if kind == "2":
            if not isinstance(data, list) or not data or not isinstance(data[0], str):
                return Invalid("bad_event")
            return Message(data[0], _payload(data[1:]), ack_id)
        if kind == "3":
            if ack_id is None or not isinstance(data, list):
                return Invalid("bad_ack")
            return Ack(ack_id, _payload(data))
        if kind == "0":
            self.ready = True
            sid = data.get("sid") if isinstance(data, dict) else None
            return Ready(sid if isinstance(sid, str) else None, data)
        if kind == "4":
            self.ready = False
            detail = data.get("message", data) if isinstance(data, dict) else data
            return Rejected("connect_error", bounded_detail(detail))
        self.ready = False
        return Closed("namespace_disconnect")
