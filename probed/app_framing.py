"""Application framings on a live session: wrap what a probe sends, unwrap what it reads.

The sans-I/O framings (probed/framing/) know the wire format; this adapts one to a session, so
probes and setup steps keep sending and reading application messages as JSON text, whatever the
envelope. Protocol heartbeats are answered here and never reach the probe.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable

from probed.config.schema.framing import FramingConfig
from probed.framing import (
    Ack,
    Closed,
    GraphQLWSFraming,
    Message,
    OperationError,
    Rejected,
    Send,
    SetupStep,
    SocketIOFraming,
)
from probed.framing.driver import SetupFailed, run_step


class FramingClosed(Exception):
    """The server ended the session inside the protocol (namespace disconnect, rejection)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SessionFraming:
    """One connection's framing state (a new one for every connection)."""

    def __init__(self, cfg: FramingConfig) -> None:
        self._cfg = cfg
        self._framing: SocketIOFraming | GraphQLWSFraming = (
            SocketIOFraming(cfg.namespace, cfg.auth_json)
            if cfg.protocol == "socketio"
            else GraphQLWSFraming(cfg.init_payload_json)
        )
        self._ops = itertools.count(1)
        # Application messages that arrived while setup was waiting for its own answer.
        self.early: list[str] = []

    def steps(self) -> tuple[SetupStep, ...]:
        return self._framing.setup_steps()

    async def setup(
        self,
        step: SetupStep,
        send: Callable[[str], Awaitable[None]],
        recv: Callable[[], Awaitable[str | bytes]],
    ) -> None:
        """Run one of the protocol's own setup steps (raises SetupFailed)."""
        _done, others = await run_step(self._framing, step, send, recv)
        for event in others:
            text = self._app_text(event)
            if text is not None:
                self.early.append(text)

    def wrap(self, text: str) -> str:
        if isinstance(self._framing, SocketIOFraming):
            frame, _ack = self._framing.emit(self._cfg.event, text, ack=True)
            return frame
        return self._framing.subscribe(f"op-{next(self._ops)}", text)

    def unwrap(self, frame: str | bytes) -> tuple[list[str], list[str]]:
        """(frames to send back now, application messages as JSON text)."""
        replies: list[str] = []
        messages: list[str] = []
        for event in self._framing.receive(frame):
            if isinstance(event, Send):
                replies.append(event.text)
            elif isinstance(event, Rejected | Closed):
                raise FramingClosed(event.reason)
            else:
                text = self._app_text(event)
                if text is not None:
                    messages.append(text)
                if (
                    isinstance(event, Message)
                    and event.ack_id is not None
                    and isinstance(self._framing, SocketIOFraming)
                ):
                    replies.append(self._framing.answer_ack(event.ack_id))
        return replies, messages

    def _app_text(self, event: object) -> str | None:
        if isinstance(event, Message):
            key = "event" if isinstance(self._framing, SocketIOFraming) else "op"
            return json.dumps({key: event.name, "data": event.payload})
        if isinstance(event, Ack):
            return json.dumps({"ack": event.ack_id, "data": event.payload})
        if isinstance(event, OperationError):
            return json.dumps({"op": event.op_id, "error": event.payload})
        return None  # heartbeats, completions, frames that break the protocol


__all__ = ["FramingClosed", "SessionFraming", "SetupFailed"]
