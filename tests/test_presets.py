"""The Socket.IO and graphql-transport-ws presets, against their real server libraries.

python-socketio's AsyncServer and strawberry-graphql's aiohttp view on loopback: a real echo probe
and a real fan-out probe through each framing, with the server's own heartbeats running.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import socketio
import strawberry
from aiohttp import web
from strawberry.aiohttp.views import GraphQLView
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from probed.framing import socketio_url
from tests.conftest import RunningDaemon, config, wait_until
from tests.framing_helpers import serving

StartDaemon = Callable[..., Awaitable[RunningDaemon]]


@pytest.fixture
async def sio_url() -> AsyncIterator[str]:
    # Pings every 200 ms: the probe's session must answer them to stay up.
    sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=(0.2, 0.8), ping_timeout=0.5)
    app = web.Application()
    sio.attach(app)

    async def on_connect(sid: str, environ: object, auth: Any) -> None:
        await sio.enter_room(sid, "lobby")

    async def on_chat(sid: str, data: Any) -> dict[str, Any]:
        # A chat server: broadcast to the room (sender excluded), ack to the sender.
        await sio.emit("chat", data, room="lobby", skip_sid=sid)
        return {"ok": True, "id": data["id"]}

    sio.on("connect", on_connect)
    sio.on("chat", on_chat)
    async with serving(app) as port:
        yield socketio_url(f"http://127.0.0.1:{port}").replace("http://", "ws://")


async def test_socketio_echo_times_the_ack(sio_url: str, start_daemon: StartDaemon) -> None:
    text = f"""
probes:
  - name: sio
    kind: echo
    url: '{sio_url}'
    framing: {{protocol: socketio, event: chat}}
    interval: 50ms
    timeout: 2s
    keepalive: off
    message:
      template: '{{"id":"{{id}}","text":"hi"}}'
      match: {{json: data.id, where: [{{path: ack, exists: true}}]}}
"""
    d = await start_daemon(config(text.replace("    keepalive: off\n", "")))
    await wait_until(lambda: d.count("probe_messages_received_total", probe="sio") >= 30)
    assert d.count("probe_messages_lost_total", probe="sio") == 0
    # Several server pings went by and were answered: the session is still the first one.
    assert d.count("probe_disconnects_total", probe="sio", reason="server_close") == 0
    assert d.value("probe_connect_phase_seconds", probe="sio", phase="setup") is not None


async def test_socketio_fanout_reads_the_broadcast_event(
    sio_url: str, start_daemon: StartDaemon
) -> None:
    endpoint = f"""
      url: '{sio_url}'
      framing: {{protocol: socketio, event: chat}}"""
    # As for GraphQL below: python-socketio runs on the probe's loop.
    text = f"""
global: {{loop_lag_threshold: 100ms}}
probes:
  - name: sio-room
    kind: fanout
    interval: 50ms
    timeout: 2s
    publisher: {endpoint}
    subscribers: {endpoint}
      count: 2
    message:
      template: '{{"id":"{{id}}"}}'
      match: {{json: data.id, where: {{event: chat}}}}
"""
    d = await start_daemon(config(text))
    await wait_until(lambda: d.count("probe_fanout_complete_seconds_count", probe="sio-room") >= 20)
    assert d.count("probe_messages_lost_total", probe="sio-room") == 0
    # The publisher's acks go to the publisher; subscribers see only the broadcast.
    assert d.count("probe_messages_duplicated_total", probe="sio-room") == 0


ROOM: set[asyncio.Queue[str]] = set()
# The publisher's message: a mutation whose variable carries the probe's id.
MUTATION = '{"query":"mutation($id: String!) { post(id: $id) }","variables":{"id":"{id}"}}'


@strawberry.type
class Query:
    @strawberry.field
    def hello(self) -> str:
        return "world"


@strawberry.type
class Mutation:
    @strawberry.mutation
    def post(self, id: str) -> str:
        for queue in ROOM:
            queue.put_nowait(id)
        return id


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def posted(self) -> AsyncGenerator[str, None]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        ROOM.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            ROOM.discard(queue)


@pytest.fixture
async def graphql_url() -> AsyncIterator[str]:
    schema = strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription)
    app = web.Application()
    view = GraphQLView(schema=schema, subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL])
    app.router.add_route("*", "/graphql", view)
    async with serving(app) as port:
        yield f"ws://127.0.0.1:{port}/graphql"


async def test_graphql_fanout_subscribes_and_times_each_next(
    graphql_url: str, start_daemon: StartDaemon
) -> None:
    # strawberry runs on the loop the probe measures on, and parsing and executing each mutation
    # stalls it past the 5 ms default now and then: the fan-out times would be withheld as
    # tainted. This test is about the protocol, not the taint rule (tests/test_selfmon.py).
    text = f"""
global: {{loop_lag_threshold: 100ms}}
probes:
  - name: gql
    kind: fanout
    interval: 50ms
    timeout: 2s
    publisher:
      url: {graphql_url}
      framing: {{protocol: graphql_ws}}
    subscribers:
      url: {graphql_url}
      framing: {{protocol: graphql_ws}}
      count: 2
      setup:
        - name: subscribe
          send: '{{"query":"subscription {{ posted }}"}}'
    message:
      template: '{MUTATION}'
      match: {{json: data.data.posted}}
"""
    d = await start_daemon(config(text))
    await wait_until(lambda: d.count("probe_fanout_complete_seconds_count", probe="gql") >= 20)
    assert d.count("probe_messages_lost_total", probe="gql") == 0
    # The publisher's own mutation results come back to the publisher only.
    assert d.count("probe_messages_unmatched_total", probe="gql", reason="missing_field") == 0


def test_socketio_needs_the_engineio_url() -> None:
    with pytest.raises(Exception, match=r"Engine\.IO URL"):
        config(
            "probes:\n  - {name: s, kind: echo, url: 'ws://h/', framing: {protocol: socketio}}\n"
        )
