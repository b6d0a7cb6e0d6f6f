"""GraphQL over WebSocket, the ``graphql-transport-ws`` subprotocol, sans I/O.

Every message is a JSON object with a ``type``: the client opens with ``connection_init`` and
waits for ``connection_ack``; either side may ``ping`` (the other answers ``pong``); the client
starts an operation with ``subscribe`` (an ``id`` it chooses and the GraphQL request as
``payload``), the server streams ``next`` results and ends with ``complete`` or ``error``; the
client stops one with ``complete``. Protocol violations end the session with a 44xx close code
(see graphql_close_reason).
"""

from __future__ import annotations

import json
from typing import Final

from probed.framing.events import (
    JSON,
    Closed,
    Completed,
    Event,
    Heartbeat,
    HeartbeatPlan,
    Invalid,
    Message,
    OperationError,
    Ready,
    Send,
    SetupStep,
)
from probed.matching import DEFAULT_MAX_BYTES, DEFAULT_MAX_DEPTH, DecodeError, decode_json

GRAPHQL_TRANSPORT_WS: Final = "graphql-transport-ws"

_CLOSE_REASONS: Final = {
    4400: "bad_request",
    4401: "unauthorized",
    4403: "forbidden",
    4406: "subprotocol_not_acceptable",
    4408: "init_timeout",
    4409: "duplicate_subscriber",
    4429: "too_many_init",
    4500: "internal_error",
}
_PING: Final = json.dumps({"type": "ping"})
_PONG: Final = Send(json.dumps({"type": "pong"}))
_SERVER_PING: Final = Heartbeat("server_ping")
_OUR_PONG: Final = Heartbeat("pong")
_MAX_OP_ID_CHARS: Final = 128


def graphql_close_reason(code: int) -> str:
    """A bounded reason for a close code a graphql-transport-ws server sent."""
    return _CLOSE_REASONS.get(code, "other")


class GraphQLWSFraming:
    """One graphql-transport-ws client session: a new instance for every connection, since it
    tracks whether this session was acknowledged. The WebSocket must offer the subprotocol
    ``GRAPHQL_TRANSPORT_WS`` (``subprotocols=[GRAPHQL_TRANSPORT_WS]``)."""

    subprotocol: Final = GRAPHQL_TRANSPORT_WS

    def __init__(
        self,
        init_payload_json: str | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if init_payload_json is not None and not isinstance(json.loads(init_payload_json), dict):
            raise ValueError("connection_init payload must be a JSON object")
        self._init_payload = init_payload_json
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self.ready = False

    # -- setup and heartbeat ------------------------------------------------------------------

    def init_frame(self) -> str:
        if self._init_payload is None:
            return '{"type":"connection_init"}'
        return f'{{"type":"connection_init","payload":{self._init_payload}}}'

    def setup_steps(self) -> tuple[SetupStep, ...]:
        return (SetupStep("connection_init", (self.init_frame(),), Ready),)

    @property
    def heartbeat(self) -> HeartbeatPlan:
        return HeartbeatPlan(client_ping=_PING, server_silence_limit=None)

    # -- outbound -------------------------------------------------------------------------------

    def subscribe(self, op_id: str, payload_json: str) -> str:
        """Start operation ``op_id``; ``payload_json`` is the request as JSON text
        (``{"query": "subscription {...}", "variables": {...}}``), e.g. a rendered template."""
        return f'{{"id":{json.dumps(op_id)},"type":"subscribe","payload":{payload_json}}}'

    def request(self, op_id: str, query: str, variables: JSON = None) -> str:
        payload: dict[str, JSON] = {"query": query}
        if variables is not None:
            payload["variables"] = variables
        return self.subscribe(op_id, json.dumps(payload))

    def complete(self, op_id: str) -> str:
        return json.dumps({"id": op_id, "type": "complete"})

    # -- inbound --------------------------------------------------------------------------------

    # One return per message type (and per way it can be malformed) keeps the protocol visible.
    def receive(self, frame: str | bytes) -> list[Event]:  # noqa: PLR0911, PLR0912
        if isinstance(frame, bytes):
            return [Invalid("binary_frame")]
        try:
            msg = decode_json(frame, max_bytes=self._max_bytes, max_depth=self._max_depth)
        except DecodeError as exc:
            return [Invalid(exc.reason)]
        if not isinstance(msg, dict):
            return [Invalid("not_object")]
        kind = msg.get("type")
        if kind == "ping":
            return [_PONG, _SERVER_PING]
        if kind == "pong":
            return [_OUR_PONG]
        if kind == "connection_ack":
            if self.ready:
                return [Invalid("unexpected")]
            self.ready = True
            return [Ready(None, msg.get("payload"))]
        if kind not in ("next", "error", "complete"):
            return [Invalid("unknown_type")]
        if not self.ready:
            return [Invalid("unexpected")]
        op_id = msg.get("id")
        if not isinstance(op_id, str) or len(op_id) > _MAX_OP_ID_CHARS:
            return [Invalid("bad_id")]
        if kind == "next":
            if "payload" not in msg:
                return [Invalid("missing_payload")]
            return [Message(op_id, msg["payload"])]
        if kind == "error":
            return [OperationError(op_id, msg.get("payload"))]
        return [Completed(op_id)]


__all__ = ["GRAPHQL_TRANSPORT_WS", "Closed", "GraphQLWSFraming", "graphql_close_reason"]
