"""A Channel over a plain websockets client connection, for the emulator tests and tools.

The daemon uses probed.connection.Session (phased dial, supervisor); this is the small direct
path: dial a ConnectRequest, timestamp each frame as it is read, before any parsing.
"""

from __future__ import annotations

import time
from types import TracebackType

from websockets.asyncio.client import ClientConnection, connect

from probed.adapters.base import ConnectRequest


class WsChannel:
    def __init__(self, request: ConnectRequest, *, open_timeout: float = 10.0) -> None:
        self.request = request
        self.open_timeout = open_timeout
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> WsChannel:
        self._ws = await connect(
            self.request.url,
            additional_headers=dict(self.request.headers),
            open_timeout=self.open_timeout,
            # Gemini answers pings in 8-30 s: the library's keepalive would close the session.
            ping_interval=20 if self.request.library_pings else None,
            compression=None,
            max_size=16 << 20,
        )
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if self._ws is not None:
            await self._ws.close()

    @property
    def ws(self) -> ClientConnection:
        assert self._ws is not None, "not connected"
        return self._ws

    async def recv(self) -> tuple[str | bytes, int]:
        data = await self.ws.recv()
        return data, time.perf_counter_ns()

    async def send(self, data: str | bytes) -> None:
        await self.ws.send(data)
