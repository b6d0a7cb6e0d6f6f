"""graphql-transport-ws framing, against strawberry-graphql's real server (aiohttp) on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import timedelta

import pytest
import strawberry
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strawberry.aiohttp.views import GraphQLView
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from probed.framing import (
    GRAPHQL_TRANSPORT_WS,
    INVALID_REASONS,
    Completed,
    Event,
    GraphQLWSFraming,
    Heartbeat,
    Invalid,
    Message,
    OperationError,
    Ready,
    Send,
    graphql_close_reason,
)
from probed.matching import Filter, Matched, equals
from tests.framing_helpers import TIMEOUT, Driven, serving

ROOM: set[asyncio.Queue[str]] = set()


@strawberry.type
class Query:
    @strawberry.field
    def hello(self) -> str:
        return "world"


@strawberry.type
class Mutation:
    @strawberry.mutation
    def publish(self, id: str) -> str:
        for queue in ROOM:
            queue.put_nowait(id)
        return id


@strawberry.type
class Posted:
    id: str
    kind: str


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def count(self, up_to: int) -> AsyncGenerator[int, None]:
        for i in range(up_to):
            yield i

    @strawberry.subscription
    async def messages(self) -> AsyncGenerator[Posted, None]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        ROOM.add(queue)
        try:
            while True:
                yield Posted(id=await queue.get(), kind="message")
        finally:
            ROOM.discard(queue)


SCHEMA = strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription)


class View(GraphQLView):
    async def on_ws_connect(self, context: dict[str, object]) -> dict[str, object] | None:  # type: ignore[override]
        if context["connection_params"] == {"token": "nope"}:
            raise ConnectionRejectionError()
        return {"welcome": True}


@pytest.fixture
async def url() -> AsyncIterator[str]:
    app = web.Application()
    view = View(
        schema=SCHEMA,
        subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL],
        connection_init_wait_timeout=timedelta(seconds=0.3),
    )
    app.router.add_route("*", "/graphql", view)
    async with serving(app) as port:
        yield f"ws://127.0.0.1:{port}/graphql"


def dial(url: str) -> connect:
    return connect(
        url,
        subprotocols=[Subprotocol(GRAPHQL_TRANSPORT_WS)],
        ping_interval=None,
        open_timeout=TIMEOUT,
    )


async def test_full_session(url: str) -> None:
    framing = GraphQLWSFraming('{"token":"ok"}')
    async with dial(url) as ws:
        assert ws.subprotocol == GRAPHQL_TRANSPORT_WS
        client = Driven(ws, framing)
        (ready,) = await client.setup(framing.setup_steps())
        assert ready == Ready(None, {"welcome": True})

        # ping / pong, timed by the caller as the keepalive.
        assert framing.heartbeat.client_ping is not None
        await ws.send(framing.heartbeat.client_ping)
        assert await client.next_event(Heartbeat) == Heartbeat("pong")

        # A finite subscription: every next, then complete.
        await ws.send(framing.request("c", "subscription { count(upTo: 3) }"))
        for i in range(3):
            assert await client.next_event(Message) == Message("c", {"data": {"count": i}})
        assert await client.next_event(Completed) == Completed("c")

        # A room subscription, a mutation on the same socket, and a reply filter on the payload.
        await ws.send(framing.subscribe("sub", '{"query":"subscription { messages { id kind } }"}'))
        replies = Filter("data.messages.id", [equals("data.messages.kind", "message")])
        delivered: list[str] = []
        for n in range(3):
            mutation = {"query": "mutation($id: String!) { publish(id: $id) }"}
            mutation["variables"] = {"id": f"m-{n}"}  # type: ignore[assignment]
            # The subscription may not be registered when the first mutation runs: retry.
            while True:
                await ws.send(framing.subscribe(f"pub-{n}", json.dumps(mutation)))
                result = await client.next_event(Message)
                assert isinstance(result, Message)
                if result.name == "sub":
                    verdict = replies.classify_value(result.payload)
                    assert isinstance(verdict, Matched)
                    delivered.append(str(verdict.id))
                    await client.next_event(Completed)
                    break
                assert result == Message(f"pub-{n}", {"data": {"publish": f"m-{n}"}})
                await client.next_event(Completed)
                try:
                    async with asyncio.timeout(0.5):
                        event = await client.next_event(Message)
                except TimeoutError:
                    continue
                assert isinstance(event, Message)
                assert event.name == "sub"
                verdict = replies.classify_value(event.payload)
                assert isinstance(verdict, Matched)
                delivered.append(str(verdict.id))
                break
        assert delivered == ["m-0", "m-1", "m-2"]
        await ws.send(framing.complete("sub"))

        # A bad query is an operation error, not the end of the session.
        await ws.send(framing.request("bad", "subscription { nope }"))
        error = await client.next_event(OperationError)
        assert isinstance(error, OperationError)
        assert error.op_id == "bad"
        await ws.send(framing.heartbeat.client_ping)
        assert await client.next_event(Heartbeat) == Heartbeat("pong")


def test_server_pings_are_answered() -> None:
    framing = GraphQLWSFraming()
    framing.ready = True
    assert framing.receive('{"type":"ping"}') == [
        Send('{"type": "pong"}'),
        Heartbeat("server_ping"),
    ]


async def close_code(ws: connect) -> int:
    async with ws as conn:
        with pytest.raises(ConnectionClosed) as caught:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    await conn.recv()
    assert caught.value.rcvd is not None
    return caught.value.rcvd.code


async def test_close_codes_from_the_real_server(url: str) -> None:
    framing = GraphQLWSFraming()  # one per session: replaced before every new connection

    # No connection_init in time: 4408.
    assert graphql_close_reason(await close_code(dial(url))) == "init_timeout"

    # Rejected in on_ws_connect: 4403; the setup step fails as closed by the server.
    rejected = GraphQLWSFraming('{"token":"nope"}')
    async with dial(url) as ws:
        # The server closes rather than sending an error message: the WebSocket says why.
        with pytest.raises(ConnectionClosed) as caught:
            await Driven(ws, rejected).setup(rejected.setup_steps())
    assert caught.value.rcvd is not None
    assert graphql_close_reason(caught.value.rcvd.code) == "forbidden"

    # Subscribe before the ack: 4401.
    async with dial(url) as ws:
        await ws.send(framing.request("x", "subscription { count(upTo: 1) }"))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert graphql_close_reason(closed.value.rcvd.code) == "unauthorized"

    # Two init messages: 4429. The same operation id twice: 4409.
    framing = GraphQLWSFraming()
    async with dial(url) as ws:
        client = Driven(ws, framing)
        await client.setup(framing.setup_steps())
        await ws.send(framing.subscribe("dup", '{"query":"subscription { messages { id } }"}'))
        await ws.send(framing.subscribe("dup", '{"query":"subscription { messages { id } }"}'))
        with pytest.raises(ConnectionClosed) as closed:
            await client.next_event(Message)
    assert closed.value.rcvd is not None
    assert graphql_close_reason(closed.value.rcvd.code) == "duplicate_subscriber"

    framing = GraphQLWSFraming()
    async with dial(url) as ws:
        await Driven(ws, framing).setup(framing.setup_steps())
        await ws.send(framing.init_frame())
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert graphql_close_reason(closed.value.rcvd.code) == "too_many_init"

    # A malformed message: 4400.
    framing = GraphQLWSFraming()
    async with dial(url) as ws:
        await Driven(ws, framing).setup(framing.setup_steps())
        await ws.send('{"type":"subscribe"}')
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is not None
    assert graphql_close_reason(closed.value.rcvd.code) == "bad_request"
    assert graphql_close_reason(1000) == "other"


# -- parser ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ('{"type":"next","id":"1","payload":{}}', [Message("1", {})]),
        (
            '{"type":"error","id":"1","payload":[{"message":"x"}]}',
            [OperationError("1", [{"message": "x"}])],
        ),
        ('{"type":"complete","id":"1"}', [Completed("1")]),
        ('{"type":"next","id":1,"payload":{}}', [Invalid("bad_id")]),
        ('{"type":"next","id":"1"}', [Invalid("missing_payload")]),
        ('{"type":"connection_ack"}', [Invalid("unexpected")]),
        ('{"type":"surprise"}', [Invalid("unknown_type")]),
        ('{"type":"pong"}', [Heartbeat("pong")]),
        ("[1]", [Invalid("not_object")]),
        ("nope", [Invalid("not_json")]),
        (b"{}", [Invalid("binary_frame")]),
        ("[" * 200 + "]" * 200, [Invalid("too_deep")]),
    ],
)
def test_parser_after_ack(frame: str | bytes, expected: list[Event]) -> None:
    framing = GraphQLWSFraming()
    assert framing.receive('{"type":"connection_ack"}') == [Ready(None, None)]
    assert framing.receive(frame) == expected


def test_messages_before_the_ack_are_invalid() -> None:
    framing = GraphQLWSFraming()
    assert framing.receive('{"type":"next","id":"1","payload":{}}') == [Invalid("unexpected")]
    assert framing.init_frame() == '{"type":"connection_init"}'
    with pytest.raises(ValueError, match="object"):
        GraphQLWSFraming("[]")


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.text(max_size=200)
    | st.binary(max_size=30)
    | st.builds(
        lambda t, i, p: json.dumps({"type": t, "id": i, "payload": p}),
        st.sampled_from(["next", "error", "complete", "ping", "pong", "connection_ack", "x"]),
        st.none() | st.text(max_size=5) | st.integers(),
        st.none() | st.text(max_size=5) | st.lists(st.integers(), max_size=3),
    )
)
def test_fuzz_parser_never_raises(frame: str | bytes) -> None:
    framing = GraphQLWSFraming()
    for _ in range(2):  # before and (possibly) after an ack
        for event in framing.receive(frame):
            assert not isinstance(event, Invalid) or event.reason in INVALID_REASONS
