"""Running a framing's setup steps over any connection, given its send and receive.

This is the one piece of the framing package that awaits; it still owns no socket and no
clock: the caller wraps each step in its own deadline and times it (the ``setup`` phase), so a
step that never completes is the caller's timeout with the step's name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from probed.framing.events import Closed, Event, Rejected, Send, SetupStep


class Framing(Protocol):
    def receive(self, frame: str | bytes) -> list[Event]: ...


class SetupFailed(Exception):
    """The server refused or ended the session during step ``step``; ``reason`` is bounded."""

    def __init__(self, step: str, reason: str, detail: str = "") -> None:
        super().__init__(f"setup step {step!r} failed: {reason}")
        self.step = step
        self.reason = reason
        self.detail = detail


async def run_step(
    framing: Framing,
    step: SetupStep,
    send: Callable[[str], Awaitable[None]],
    recv: Callable[[], Awaitable[str | bytes]],
) -> tuple[Event, list[Event]]:
    """Send the step's frames, then read until its ``until`` event.

    Returns that event and whatever else arrived meanwhile that the caller may want
    (application messages, invalid frames to count). ``Send`` events are sent on the spot, so
    heartbeats are answered during a slow setup too.
    """
    for frame in step.send:
        await send(frame)
    others: list[Event] = []
    done: Event | None = None
    while done is None:
        # A whole batch is handled even after the awaited event, so nothing in it is lost.
        for event in framing.receive(await recv()):
            if isinstance(event, Send):
                await send(event.text)
            elif done is None and isinstance(event, step.until):
                done = event
            elif isinstance(event, Rejected):
                raise SetupFailed(step.name, event.reason, event.detail)
            elif isinstance(event, Closed):
                raise SetupFailed(step.name, event.reason)
            else:
                others.append(event)
    return done, others
