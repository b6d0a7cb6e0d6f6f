"""Socket.IO v4 framing, against python-socketio's real AsyncServer (aiohttp) on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import socketio
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from probed.framing import (
    INVALID_REASONS,
    Ack,
    Closed,
    Event,
    Heartbeat,
    Invalid,
    Message,
    Opened,
    Ready,
    Rejected,
    Send,
    SocketIOFraming,
    socketio_url,
)
from probed.framing.driver import SetupFailed
from tests.framing_helpers import TIMEOUT, Driven, serving

PING_INTERVAL = 0.2
ADVERTISED_INTERVAL = 1.0
PING_TIMEOUT = 0.5


class Server:
    def __init__(self, sio: socketio.AsyncServer, port: int) -> None:
        self.sio = sio
        self.url = socketio_url(f"http://127.0.0.1:{port}")
        self.answers: asyncio.Queue[Any] = asyncio.Queue()
        self.sids: asyncio.Queue[str] = asyncio.Queue()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    # A short ping interval so that a test sees several heartbeats. python-engineio advertises
    # whole seconds only (interval plus grace, truncated), hence the grace that makes it 1 s.
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        ping_interval=(PING_INTERVAL, ADVERTISED_INTERVAL - PING_INTERVAL),
        ping_timeout=PING_TIMEOUT,
    )
    app = web.Application()
    sio.attach(app)
    async with serving(app) as port:
        srv = Server(sio, port)

        for namespace in ("/", "/chat"):

            async def on_connect(sid: str, environ: object, auth: Any, ns: str = namespace) -> None:
                if ns == "/chat" and auth != {"token": "ok"}:
                    raise socketio.exceptions.ConnectionRefusedError("bad token")
                await srv.sids.put(sid)

            async def on_publish(sid: str, data: Any, ns: str = namespace) -> dict[str, Any]:
                # Ack to the sender and a broadcast to the room, like a chat server.
                await sio.emit("message", {"type": "message", **data}, to=sid, namespace=ns)
                return {"type": "ack", "id": data["id"]}

            sio.on("connect", on_connect, namespace=namespace)
            sio.on("publish", on_publish, namespace=namespace)
        yield srv


def dial(url: str) -> connect:
    return connect(url, ping_interval=None, open_timeout=TIMEOUT)


@pytest.mark.parametrize(("namespace", "auth"), [("/", None), ("/chat", '{"token":"ok"}')])
async def test_full_session(server: Server, namespace: str, auth: str | None) -> None:
    framing = SocketIOFraming(namespace, auth)
    async with dial(server.url) as ws:
        client = Driven(ws, framing)
        opened, ready = await client.setup(framing.setup_steps())
        assert isinstance(opened, Opened)
        assert opened.ping_interval == pytest.approx(ADVERTISED_INTERVAL)
        assert opened.ping_timeout == pytest.approx(PING_TIMEOUT)
        limit = framing.heartbeat.server_silence_limit
        assert limit == pytest.approx(ADVERTISED_INTERVAL + PING_TIMEOUT)
        assert framing.heartbeat.client_ping is None
        assert isinstance(ready, Ready)
        assert ready.session_id == await asyncio.wait_for(server.sids.get(), TIMEOUT)

        frame, ack_id = framing.emit("publish", json.dumps({"id": "m-1", "text": "hi"}), ack=True)
        assert ack_id == 0
        await ws.send(frame)
        ack = await client.next_event(Ack)
        assert ack == Ack(0, {"type": "ack", "id": "m-1"})
        message = await client.next_event(Message)
        assert message == Message("message", {"type": "message", "id": "m-1", "text": "hi"}, None)

        _, second = framing.emit("publish", '{"id":"m-2"}', ack=True)
        assert second == 1

        # Several server pings, each answered: the session outlives many silence limits.
        for _ in range(4):
            assert await client.next_event(Heartbeat) == Heartbeat("server_ping")
        frame, _ = framing.emit("publish", '{"id":"m-3"}', ack=True)
        await ws.send(frame)
        assert await client.next_event(Ack) == Ack(2, {"type": "ack", "id": "m-3"})

        await ws.send(framing.disconnect_frame())


async def test_server_emit_with_callback_is_answered(server: Server) -> None:
    framing = SocketIOFraming()
    answered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    async with dial(server.url) as ws:
        client = Driven(ws, framing)
        await client.setup(framing.setup_steps())
        sid = await asyncio.wait_for(server.sids.get(), TIMEOUT)
        await server.sio.emit(
            "question", {"q": 1}, to=sid, callback=lambda *args: answered.set_result(args)
        )
        question = await client.next_event(Message)
        assert isinstance(question, Message)
        assert question.name == "question"
        assert question.payload == {"q": 1}
        assert question.ack_id is not None
        await ws.send(framing.answer_ack(question.ack_id, '{"a":2}'))
        assert await asyncio.wait_for(answered, TIMEOUT) == ({"a": 2},)


async def test_server_disconnect_is_closed_event(server: Server) -> None:
    framing = SocketIOFraming()
    async with dial(server.url) as ws:
        client = Driven(ws, framing)
        await client.setup(framing.setup_steps())
        sid = await asyncio.wait_for(server.sids.get(), TIMEOUT)
        await server.sio.disconnect(sid)
        assert await client.next_event(Closed) == Closed("namespace_disconnect")


async def test_refused_connect_fails_the_step_with_the_servers_message(server: Server) -> None:
    framing = SocketIOFraming("/chat", '{"token":"wrong"}')
    async with dial(server.url) as ws:
        with pytest.raises(SetupFailed) as caught:
            await Driven(ws, framing).setup(framing.setup_steps())
    assert caught.value.step == "namespace_connect"
    assert caught.value.reason == "connect_error"
    assert caught.value.detail == "bad token"


async def test_a_client_that_never_pongs_is_dropped_by_the_server(server: Server) -> None:
    # The control for the heartbeat test: the pongs the framing asks for are what keep it alive.
    framing = SocketIOFraming()
    async with dial(server.url) as ws:
        await Driven(ws, framing).setup(framing.setup_steps())
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(TIMEOUT):
                while True:
                    await ws.recv()  # read, never answer


# -- parser ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("2", [Send("3"), Heartbeat("server_ping")]),
        ("6", []),
        ("1", [Closed("server_close")]),
        ("3", [Invalid("unexpected_pong")]),
        ("9", [Invalid("unknown_packet")]),
        ("", [Invalid("empty")]),
        (b"\x04", [Invalid("binary_frame")]),
        ('0{"sid":"s","pingInterval":"25000","pingTimeout":1}', [Invalid("bad_open")]),
        ("0[", [Invalid("not_json")]),
        ("40", [Ready(None, None)]),
        ('42["ev"]', [Message("ev", None)]),
        ('42["ev",1,2]', [Message("ev", [1, 2])]),
        ('4217["ev",{"a":1}]', [Message("ev", {"a": 1}, 17)]),
        ("42[]", [Invalid("bad_event")]),
        ("42[1]", [Invalid("bad_event")]),
        ("42{}", [Invalid("bad_event")]),
        ("43[1]", [Invalid("bad_ack")]),
        ("433[]", [Ack(3, None)]),
        ("4" + "3" + "9" * 16 + "[]", [Invalid("bad_ack_id")]),
        ('44{"message":"' + "x" * 500 + '"}', [Rejected("connect_error", "x" * 200)]),
        ("41", [Closed("namespace_disconnect")]),
        ('42/other,["ev"]', [Invalid("other_namespace")]),
        ("451-[]", [Invalid("binary_unsupported")]),
        ("47", [Invalid("unknown_packet")]),
        ("4", [Invalid("empty")]),
        ("42" + "[" * 100 + "]" * 100, [Invalid("too_deep")]),
    ],
)
def test_parser(frame: str | bytes, expected: list[Event]) -> None:
    assert SocketIOFraming().receive(frame) == expected


def test_namespaced_frames() -> None:
    framing = SocketIOFraming("/chat")
    assert framing.connect_frame() == "40/chat,"
    assert framing.emit("ev", "[1]") == ('42/chat,["ev",[1]]', None)
    assert framing.emit("ev", ack=True) == ('42/chat,0["ev"]', 0)
    assert framing.answer_ack(5) == "43/chat,5[]"
    assert framing.receive('40/chat,{"sid":"x"}') == [Ready("x", {"sid": "x"})]
    assert framing.receive('42["ev"]') == [Invalid("other_namespace")]
    assert framing.receive('42/chat,["ev","a"]') == [Message("ev", "a")]
    with pytest.raises(ValueError, match="namespace"):
        SocketIOFraming("chat")
    with pytest.raises(ValueError, match="object"):
        SocketIOFraming("/", "[1]")


def test_url() -> None:
    assert socketio_url("https://h.example:8443") == (
        "wss://h.example:8443/socket.io/?EIO=4&transport=websocket"
    )
    assert socketio_url("ws://h/x?token=1", path="/rt/") == (
        "ws://h/rt/?token=1&EIO=4&transport=websocket"
    )


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.text(max_size=200)
    | st.binary(max_size=50)
    | st.builds(
        lambda p, s: p + s,
        st.sampled_from(["0", "40", "42", "43", "44", "4/chat,", "2"]),
        st.text(max_size=100),
    )
)
def test_fuzz_parser_never_raises(frame: str | bytes) -> None:
    for framing in (SocketIOFraming(), SocketIOFraming("/chat")):
        events = framing.receive(frame)
        assert all(not isinstance(e, Invalid) or e.reason in INVALID_REASONS for e in events)
