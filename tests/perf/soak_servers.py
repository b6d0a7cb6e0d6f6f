"""The soak's far ends, in a process of their own: what the soak samples is then the daemon alone.

An echo target (faults through its HTTP control API), a ping flood that never reads, and a server
that answers every message with JSON nested 200,000 deep. Prints one JSON line with their URLs,
then serves until killed.

    python -m tests.perf.soak_servers
"""

from __future__ import annotations

import asyncio
import json

import uvloop
from websockets.asyncio.server import serve

from probed.targets.echo import EchoTarget
from tests.test_hostile_peers import _deep_reply, _flood_pings
from tests.test_reconnect import RawServer


async def main() -> None:
    async with (
        EchoTarget() as echo,
        RawServer(_flood_pings) as flood,
        serve(_deep_reply(200_000), "127.0.0.1", 0, max_size=None) as deep,
    ):
        urls = {
            "echo": echo.url,
            "echo_control": echo.address("/-/fault"),
            "flood": flood.url(),
            "deep": f"ws://127.0.0.1:{deep.sockets[0].getsockname()[1]}/",
        }
        print(json.dumps(urls), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
