"""The events framings produce and the setup steps they describe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeAlias

JSON: TypeAlias = Any

# Free text from a peer (a rejection message) is cut to this before it can reach a log line.
MAX_DETAIL_CHARS: Final = 200


def bounded_detail(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text[:MAX_DETAIL_CHARS]


@dataclass(frozen=True, slots=True)
class Send:
    """A frame the caller must send now (a pong, an answer to a server's ack request)."""

    text: str


@dataclass(frozen=True, slots=True)
class Opened:
    """The transport handshake (Engine.IO open) arrived, with the server's heartbeat terms."""

    session_id: str | None
    ping_interval: float | None
    ping_timeout: float | None


@dataclass(frozen=True, slots=True)
class Ready:
    """Setup is complete: application messages may flow (namespace joined, connection_ack)."""

    session_id: str | None = None
    payload: JSON = None


@dataclass(frozen=True, slots=True)
class Message:
    """An application message: ``name`` is the event name (Socket.IO) or operation id (GraphQL).

    ``payload`` is what reply filters look at: the single argument of an event (or the list of
    arguments when there are several, None when none), or a GraphQL ``next`` payload.
    ``ack_id`` is set when the server asked for an acknowledgement; answer with the framing's
    ``answer_ack``.
    """

    name: str
    payload: JSON
    ack_id: int | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """The server acknowledged our emit ``ack_id``; payload as for Message."""

    ack_id: int
    payload: JSON


@dataclass(frozen=True, slots=True)
class OperationError:
    """A GraphQL operation failed (``error``); the operation is over."""

    op_id: str
    payload: JSON


@dataclass(frozen=True, slots=True)
class Completed:
    """The server completed a GraphQL operation."""

    op_id: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Protocol keepalive traffic: ``server_ping`` (answered via Send) or ``pong`` (to our ping)."""

    kind: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """The server refused the setup (connect_error).

    ``reason`` is bounded (a metric label may carry it); ``detail`` is cut short, for logs only.
    """

    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Closed:
    """The server ended the session in-band (Engine.IO close, namespace disconnect)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """A frame that breaks the protocol; counted with a bounded reason and otherwise ignored.

    ``reason`` is always one of INVALID_REASONS, so it can be a metric label.
    """

    reason: str


INVALID_REASONS: Final = frozenset(
    {
        # any framing
        "binary_frame",
        "not_json",
        "too_large",
        "too_deep",
        # Socket.IO
        "empty",
        "unknown_packet",
        "unexpected_pong",
        "bad_open",
        "binary_unsupported",
        "other_namespace",
        "bad_ack_id",
        "bad_event",
        "bad_ack",
        # graphql-transport-ws
        "not_object",
        "unexpected",
        "unknown_type",
        "bad_id",
        "missing_payload",
    }
)


Event: TypeAlias = (
    Send
    | Opened
    | Ready
    | Message
    | Ack
    | OperationError
    | Completed
    | Heartbeat
    | Rejected
    | Closed
    | Invalid
)


@dataclass(frozen=True, slots=True)
class SetupStep:
    """One step of a framing's setup: send ``send`` (in order), then wait for an ``until`` event.

    A Rejected or Closed event while waiting fails the step; the caller times each step and
    names it in the connect error.
    """

    name: str
    send: tuple[str, ...]
    until: type[Opened] | type[Ready]


@dataclass(frozen=True, slots=True)
class HeartbeatPlan:
    """What keeps the session alive.

    ``client_ping``: a frame to send periodically (answered by a ``pong`` Heartbeat), or None.
    ``server_silence_limit``: seconds after which a server that promised pings and sent none
    is dead (Engine.IO: pingInterval + pingTimeout), or None.
    """

    client_ping: str | None
    server_silence_limit: float | None
