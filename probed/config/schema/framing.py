"""Presets for the two common message framings: Socket.IO v4 and graphql-transport-ws."""

import json
from typing import Any, Literal

from pydantic import Field

from probed.config.schema.strict import StrictModel
from probed.config.validation import Problem


class FramingConfig(StrictModel):
    """How application messages are wrapped on the wire (and what setup the protocol needs).

    socketio: Engine.IO open and namespace connect as setup, server pings answered, messages
    emitted as `event` with an ack requested; inbound events read as {"event": name, "data": ...}
    and acks as {"ack": n, "data": ...}. graphql_ws: connection_init/ack as setup, the
    graphql-transport-ws subprotocol offered, each message sent as a subscribe operation; results
    read as {"op": id, "data": ...} (errors as {"op": id, "error": ...}).
    """

    protocol: Literal["socketio", "graphql_ws"] = Field(
        description="socketio (Engine.IO v4 / Socket.IO v5) or graphql_ws (graphql-transport-ws)"
    )
    namespace: str = Field(default="/", description="socketio: the namespace to connect")
    auth: dict[str, Any] | None = Field(default=None, description="socketio: connect payload")
    event: str = Field(default="message", description="socketio: event our messages are sent as")
    init_payload: dict[str, Any] | None = Field(
        default=None, description="graphql_ws: connection_init payload"
    )

    def _semantic_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.protocol == "socketio":
            if not self.namespace.startswith("/") or "," in self.namespace:
                problems.append((("namespace",), "must start with '/' and contain no ','"))
            if self.init_payload is not None:
                problems.append((("init_payload",), "is for graphql_ws"))
        elif self.auth is not None or self.namespace != "/" or self.event != "message":
            problems.append(((), "namespace, auth and event are for socketio"))
        return problems

    @property
    def auth_json(self) -> str | None:
        return None if self.auth is None else json.dumps(self.auth)

    @property
    def init_payload_json(self) -> str | None:
        return None if self.init_payload is None else json.dumps(self.init_payload)
