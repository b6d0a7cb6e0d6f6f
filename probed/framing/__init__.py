"""Sans-I/O framings for application protocols that wrap messages in their own envelope.

A framing turns inbound frames into typed events and builds outbound frames; it never touches
a socket or a clock. The caller (a probe's session) sends what a framing asks it to send
(``Send`` events: pongs, acks), times the setup steps, and watches the heartbeat plan.
"""

from probed.framing.events import (
    INVALID_REASONS,
    Ack,
    Closed,
    Completed,
    Event,
    Heartbeat,
    HeartbeatPlan,
    Invalid,
    Message,
    Opened,
    OperationError,
    Ready,
    Rejected,
    Send,
    SetupStep,
)
from probed.framing.graphql_ws import GRAPHQL_TRANSPORT_WS, GraphQLWSFraming, graphql_close_reason
from probed.framing.socketio import SocketIOFraming, socketio_url

__all__ = [
    "GRAPHQL_TRANSPORT_WS",
    "INVALID_REASONS",
    "Ack",
    "Closed",
    "Completed",
    "Event",
    "GraphQLWSFraming",
    "Heartbeat",
    "HeartbeatPlan",
    "Invalid",
    "Message",
    "Opened",
    "OperationError",
    "Ready",
    "Rejected",
    "Send",
    "SetupStep",
    "SocketIOFraming",
    "graphql_close_reason",
    "socketio_url",
]
