"""A websockets client driven by a sans-I/O framing, for the framing tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from websockets.asyncio.client import ClientConnection

from probed.framing.driver import Framing, run_step
from probed.framing.events import Event, Send, SetupStep
from probed.targets.control import HttpServer

TIMEOUT = 5.0  # generous: only reached when something is broken


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    http = HttpServer(app, "127.0.0.1", 0)
    await http.start()
    try:
        yield http.port
    finally:
        await http.stop()


class Driven:
    """Reads frames through the framing, answers what it asks to send, queues the rest."""

    def __init__(self, ws: ClientConnection, framing: Framing) -> None:
        self.ws = ws
        self.framing = framing
        self.pending: list[Event] = []

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def recv(self) -> str | bytes:
        return await self.ws.recv()

    async def setup(self, steps: tuple[SetupStep, ...]) -> list[Event]:
        done = []
        for step in steps:
            async with asyncio.timeout(TIMEOUT):
                event, others = await run_step(self.framing, step, self.send, self.recv)
            done.append(event)
            self.pending.extend(others)
        return done

    async def next_event(self, kind: type[Event] | tuple[type[Event], ...]) -> Event:
        """The next event of ``kind``; others are kept in ``pending`` for later assertions."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                for i, event in enumerate(self.pending):
                    if isinstance(event, kind):
                        return self.pending.pop(i)
                for event in self.framing.receive(await self.ws.recv()):
                    if isinstance(event, Send):
                        await self.ws.send(event.text)
                    self.pending.append(event)
