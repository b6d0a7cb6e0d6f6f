"""A plain WebSocket echo server that several processes can share a port with (SO_REUSEPORT).

For the workers benchmark: one echo process on a 2-core machine would bound what probed's workers
can hold, so the kernel spreads the connections over several of these instead.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from websockets.asyncio.server import ServerConnection, serve


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def main(port: int) -> None:
    async with serve(echo, "127.0.0.1", port, reuse_port=True, compression=None):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
