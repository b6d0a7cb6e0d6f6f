"""Real application protocols against the reference pub/sub target: joins, acks beside broadcasts.

The two cases a new user hit: a server that wants a join before anything else (it closed every
session with 4001, and the config could not say "join"), and a server that acks each message and
also broadcasts it to the room (every message counted as a duplicate, room traffic as unmatched).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from probed.targets.pubsub import PubSubTarget
from tests.conftest import RunningDaemon, config, wait_until

StartDaemon = Callable[..., Awaitable[RunningDaemon]]

JOIN = """
    setup:
      - name: join
        send: '{"type":"join","room":"lobby","name":"{probe}"}'
        expect: {where: {type: joined}, capture: {room: room}}
        timeout: 2s
"""


@pytest.fixture
async def room() -> AsyncIterator[PubSubTarget]:
    async with PubSubTarget(echo_to_sender=True, chatter_interval=0.05) as target:
        yield target


def chat_probe(url: str, *, join: bool = True, where: bool = True) -> str:
    match = "{json: id, where: {type: ack}}" if where else "{json: id}"
    return (
        f"""
probes:
  - name: chat
    kind: echo
    url: {url}
    interval: 50ms
    timeout: 1s
    message:
      template: '{{"type":"publish","room":"{{room}}","id":"{{id}}"}}'
      match: {match}
"""
        + (JOIN if join else "")
        + "    connection: {reconnect: {initial: 100ms, max: 200ms}}\n"
    )


async def test_join_then_acks_count_once_and_room_traffic_is_ignored(
    room: PubSubTarget, start_daemon: StartDaemon
) -> None:
    d = await start_daemon(config(chat_probe(room.url)))
    await wait_until(lambda: d.count("probe_messages_received_total", probe="chat") >= 20)
    await wait_until(
        lambda: d.count("probe_messages_ignored_total", probe="chat", reason="filtered") >= 20
    )
    # The broadcast of our own message and the chatter are ignored, never duplicates.
    assert d.count("probe_messages_duplicated_total", probe="chat") == 0
    for reason in ("missing_field", "unknown", "not_json"):
        assert d.count("probe_messages_unmatched_total", probe="chat", reason=reason) == 0
    assert d.count("probe_connect_phase_seconds", probe="chat", phase="setup") > 0
    assert room.members("lobby") == 1


async def test_without_the_filter_the_broadcast_would_be_a_duplicate(
    room: PubSubTarget, start_daemon: StartDaemon
) -> None:
    # The control: the same server, no `where`: this is the false page the filter prevents.
    d = await start_daemon(config(chat_probe(room.url, where=False)))
    await wait_until(lambda: d.count("probe_messages_duplicated_total", probe="chat") >= 5)


async def test_without_a_join_the_server_closes_and_that_is_what_is_counted(
    room: PubSubTarget, start_daemon: StartDaemon
) -> None:
    text = chat_probe(room.url, join=False).replace("{room}", "lobby")
    d = await start_daemon(config(text))
    await wait_until(lambda: d.count("probe_close_codes_total", probe="chat", code="4001") >= 2)


async def test_a_join_that_is_never_answered_is_a_setup_error(start_daemon: StartDaemon) -> None:
    async with PubSubTarget(answer_joins=False) as silent:
        d = await start_daemon(config(chat_probe(silent.url)))
        await wait_until(
            lambda: d.count("probe_connect_errors_total", probe="chat", reason="setup") >= 1,
            within=15,
        )
        status = next(p.status for p in d.daemon.exposition.probes())
        assert status.last_error is not None and "step join" in status.last_error.detail


def test_unknown_placeholders_are_config_errors() -> None:
    with pytest.raises(Exception, match=r"unknown placeholder \{roomid\}"):
        config(chat_probe("ws://127.0.0.1:1/").replace("{room}", "{roomid}"))
    with pytest.raises(Exception, match=r"setup\[0\]\.send.*unknown placeholder \{nope\}"):
        config(chat_probe("ws://127.0.0.1:1/").replace('"name":"{probe}"', '"name":"{nope}"'))


async def test_application_heartbeats_keep_the_session_and_a_missing_answer_is_a_stall(
    room: PubSubTarget, start_daemon: StartDaemon
) -> None:
    heartbeat = """    connection:
      reconnect: {initial: 100ms, max: 200ms}
      keepalive:
        mode: message
        interval: 200ms
        timeout: 300ms
        message: '{"type":"ping","id":"hb-{seq}"}'
        expect: {where: {type: pong}}
"""
    text = chat_probe(room.url).replace(
        "    connection: {reconnect: {initial: 100ms, max: 200ms}}\n", heartbeat
    )
    d = await start_daemon(config(text))
    await wait_until(lambda: d.count("probe_messages_received_total", probe="chat") >= 20)
    # Answered heartbeats: the session holds, and the pongs never reach the reply matcher.
    assert d.count("probe_disconnects_total", probe="chat", reason="stalled") == 0
    assert d.count("probe_messages_unmatched_total", probe="chat", reason="missing_field") == 0
    # A server that stops answering pings (but still acks): the heartbeat says it is stalled.
    room.answer_pings = False
    await wait_until(
        lambda: d.count("probe_disconnects_total", probe="chat", reason="stalled") >= 1
    )
