"""A WebSocket server that accepts the upgrade and then discards every byte: the bare sender's peer.

    python -m tests.perf.ws_sink      # prints "ws sink listening on ws://127.0.0.1:PORT/"

For the pacing benchmark's floor running beside probed: the STT emulators (aiohttp, numpy per
chunk) already need about a core for probed's 200 streams on this two-core machine, so the bare
sender's 10,000 chunks a second go here, where reading them costs next to nothing and leaves the
CPU to what is measured. It answers no frames (not even close): the sender drains nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import cast

import uvloop

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self._head = b""
        self._upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._upgraded:
            return
        self._head += data
        if b"\r\n\r\n" not in self._head or self.transport is None:
            return
        key = b""
        for line in self._head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self._upgraded = True


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"ws sink listening on ws://127.0.0.1:{port}/", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
