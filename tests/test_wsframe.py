"""The direct frame writer: websockets' own parser reads its frames, real servers take them, and
whenever websockets' send() would wait or refuse, it steps aside."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import WSMsgType, web
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from probed.wsframe import _MaskKeys, frame, write_now


def parse(data: bytes) -> Frame:
    """As a server parses a client's frame (masked, no size limit, no extensions)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=True)
    try:
        next(parser)
    except StopIteration as done:
        parsed: Frame = done.value
        return parsed
    raise AssertionError("the frame was incomplete")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 640, 65535, 65536, 70000])
def test_frames_parse_back_at_every_length_encoding(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    parsed = parse(frame(0x2, payload, b"\x01\x02\x03\x04"))
    assert parsed.opcode is Opcode.BINARY and parsed.fin
    assert parsed.data == payload


def test_masking_keys_are_fresh_for_every_frame() -> None:
    keys = _MaskKeys()
    taken = [keys.take() for _ in range(3000)]  # across several bulk draws
    assert all(len(k) == 4 for k in taken)
    assert len(set(taken)) > 2990  # 4 random bytes: a handful of collisions at most


@contextlib.asynccontextmanager
async def echo_server(compression: str | None = None) -> AsyncIterator[str]:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, compression=compression) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


async def test_a_websockets_server_receives_text_and_binary_frames_in_order() -> None:
    async with echo_server() as url, connect(url, compression=None) as ws:
        sent: list[str | bytes] = ["héllo", b"\x00" * 640, "x" * 70000, b"", b"end"]
        for message in sent:
            assert write_now(ws, message)
        # Interleaved with websockets' own sends: the byte stream stays well formed.
        await ws.send("via websockets")
        sent.append("via websockets")
        assert [await ws.recv() for _ in sent] == sent


async def test_it_steps_aside_when_websockets_would_wait_or_refuse() -> None:
    async with echo_server() as url:
        async with connect(url, compression=None) as ws:
            ws.paused = True  # as the transport does when its buffer is over the high-water mark
            assert not write_now(ws, b"chunk")
            ws.paused = False
            assert write_now(ws, b"chunk")
            assert await ws.recv() == b"chunk"
        # Closed: websockets' send() raises the close, as before.
        assert not write_now(ws, b"late")
        with pytest.raises(ConnectionClosed):
            await ws.send(b"late")
    async with echo_server("deflate") as url, connect(url) as compressed:
        assert compressed.protocol.extensions  # permessage-deflate negotiated
        assert not write_now(compressed, b"chunk")


async def test_an_aiohttp_server_receives_them() -> None:
    """The STT emulators are aiohttp: a second, independent parser."""
    received: list[tuple[WSMsgType, str | bytes]] = []
    done = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            received.append((msg.type, msg.data))
            if len(received) == 3:
                done.set()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        ws: ClientConnection
        async with connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
            assert write_now(ws, b"\x01\x02" * 320)
            assert write_now(ws, '{"type": "KeepAlive"}')
            assert write_now(ws, b"\xff" * 200)
            await asyncio.wait_for(done.wait(), 5)
    finally:
        await runner.cleanup()
    assert received == [
        (WSMsgType.BINARY, b"\x01\x02" * 320),
        (WSMsgType.TEXT, '{"type": "KeepAlive"}'),
        (WSMsgType.BINARY, b"\xff" * 200),
    ]


async def test_a_fragmented_send_in_progress_is_waited_for() -> None:
    async with echo_server() as url, connect(url, compression=None) as ws:
        opened, release = asyncio.Event(), asyncio.Event()

        async def fragments() -> AsyncIterator[bytes]:
            yield b"first half, "
            opened.set()  # asked for the next fragment: the first is out, the message open
            await release.wait()
            yield b"second half"

        sending = asyncio.create_task(ws.send(fragments()))
        await opened.wait()
        # A frame now would land inside the fragmented message: step aside.
        assert not write_now(ws, b"chunk")
        release.set()
        await sending
        assert write_now(ws, b"chunk")
        assert await ws.recv() == b"first half, second half"
        assert await ws.recv() == b"chunk"
