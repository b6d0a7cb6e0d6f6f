"""The reference pub/sub target over real sockets: protocol, faults, and its ground truth."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import trustme
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from probed.cli import build_parser
from probed.matching import Filter, Matched, equals
from probed.targets.pubsub import PubSubTarget
from probed.template import Template
from tests.targets import eventually

TIMEOUT = 5.0  # generous: only reached when something is broken


def dial(url: str) -> connect:
    return connect(url, ping_interval=None, open_timeout=TIMEOUT)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        message: dict[str, Any] = json.loads(await ws.recv())
        return message


async def request(ws: ClientConnection, **fields: Any) -> dict[str, Any]:
    await ws.send(json.dumps(fields))
    return await recv(ws)


async def join(ws: ClientConnection, room: str = "r", **fields: Any) -> None:
    assert await request(ws, type="join", room=room, **fields) == {
        "type": "joined",
        "room": room,
        **({"id": fields["id"]} if "id" in fields else {}),
    }


async def assert_silent(ws: ClientConnection, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            await ws.recv()


@pytest.fixture
async def target() -> AsyncIterator[PubSubTarget]:
    async with PubSubTarget() as target:
        yield target


async def test_ack_to_publisher_and_broadcast_to_the_room(target: PubSubTarget) -> None:
    async with dial(target.url) as pub, dial(target.url) as a, dial(target.url) as b:
        await join(pub, name="pub")
        await join(a, name="a", id=1)
        await join(b)
        assert target.members("r") == 3
        ack = await request(pub, type="publish", room="r", id="m-1", data={"x": [1]})
        assert ack == {"type": "ack", "id": "m-1"}
        expected = {"type": "message", "room": "r", "id": "m-1", "data": {"x": [1]}, "from": "pub"}
        assert await recv(a) == expected
        assert await recv(b) == expected
        await assert_silent(pub)  # not to the sender by default

        assert await request(a, type="leave", room="r") == {"type": "left", "room": "r"}
        await request(pub, type="publish", room="r", id=7)
        assert (await recv(b))["id"] == 7
        await assert_silent(a)
    truth = target.truth()
    assert truth["a"]["delivered"] == 1
    assert truth["a"]["delivered_ids"] == ["m-1"]
    assert truth["conn-3"]["delivered_ids"] == ["m-1", "7"]
    assert "pub" not in truth


async def test_echo_to_sender() -> None:
    async with PubSubTarget(echo_to_sender=True) as target, dial(target.url) as pub:
        await join(pub)
        assert await request(pub, type="publish", room="r", id="x") == {"type": "ack", "id": "x"}
        assert (await recv(pub))["type"] == "message"


async def test_join_is_required_first(target: PubSubTarget) -> None:
    async with dial(target.url) as ws:
        await ws.send(json.dumps({"type": "publish", "room": "r", "id": "1"}))
        with pytest.raises(ConnectionClosed) as caught:
            await recv(ws)
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 4001
    assert caught.value.rcvd.reason == "join first"

    async with PubSubTarget(join_close_code=4403) as other, dial(other.url) as ws:
        await ws.send("not even json")
        with pytest.raises(ConnectionClosed) as caught:
            await recv(ws)
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 4403

    async with PubSubTarget(require_join=False) as lax, dial(lax.url) as ws:
        assert await request(ws, type="publish", room="r", id="1") == {"type": "ack", "id": "1"}
    with pytest.raises(ValueError, match="close code"):
        PubSubTarget(join_close_code=1006)


async def test_bad_input_is_answered_and_the_session_stays(target: PubSubTarget) -> None:
    async with dial(target.url) as ws:
        await join(ws)
        assert await request(ws, type="ping", id=3) == {"type": "pong", "id": 3}
        for sent, reason in (
            ("[" * 10_000 + "]" * 10_000, "not_json_object"),
            ("[]", "not_json_object"),
            (json.dumps({"type": "publish", "room": "r"}), "id_required"),
            (json.dumps({"type": "publish", "room": "r", "id": True}), "id_required"),
            (json.dumps({"type": "join"}), "room_required"),
            (json.dumps({"type": "dance", "room": "r"}), "unknown_type"),
        ):
            await ws.send(sent)
            assert (await recv(ws))["reason"] == reason
        await ws.send(b"\x00")
        assert (await recv(ws))["reason"] == "binary"
        assert await request(ws, type="ping") == {"type": "pong"}


async def test_delay_applies_to_broadcasts_not_acks() -> None:
    async with PubSubTarget(delay=0.2) as target, dial(target.url) as pub, dial(target.url) as sub:
        await join(pub)
        await join(sub)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await request(pub, type="publish", room="r", id="d")
        assert loop.time() - start < 0.2  # the ack is not delayed
        assert (await recv(sub))["id"] == "d"
        assert 0.2 <= loop.time() - start < 0.2 + TIMEOUT


async def collect(ws: ClientConnection, until: asyncio.Event) -> list[str]:
    """Ids of every message the subscriber sees until `until` is set and the line is quiet."""
    seen: list[str] = []
    while True:
        try:
            async with asyncio.timeout(0.3 if until.is_set() else TIMEOUT):
                msg = json.loads(await ws.recv())
        except TimeoutError:
            if until.is_set():
                return seen
            raise
        seen.append(str(msg["id"]))


async def publish_many(target: PubSubTarget, n: int, done: asyncio.Event, **faults: Any) -> None:
    async with dial(target.url) as pub:
        await join(pub, name="pub")
        for i in range(n):
            await request(pub, type="publish", room="r", id=i)
        done.set()


async def test_drop_rate_and_ground_truth() -> None:
    n = 400
    async with PubSubTarget(drop=0.1, seed=7) as target, dial(target.url) as sub:
        await join(sub, name="sub")
        done = asyncio.Event()
        seen, _ = await asyncio.gather(collect(sub, done), publish_many(target, n, done))
        await eventually(
            lambda: sum(target.truth()["sub"][k] for k in ("delivered", "dropped")) == n,
            "every delivery written or dropped",
        )
        seen += await collect(sub, done)
    truth = target.truth()["sub"]
    assert truth["delivered"] + truth["dropped"] == n
    assert 0.05 * n <= truth["dropped"] <= 0.16 * n
    assert seen == truth["delivered_ids"]
    assert sorted(set(seen) | set(truth["dropped_ids"]), key=int) == [str(i) for i in range(n)]


async def test_duplicates_and_reordering_are_counted_exactly() -> None:
    n = 300
    target = PubSubTarget(duplicate=0.1, reorder=0.1, reorder_hold=0.2, seed=11)
    async with target, dial(target.url) as sub:
        await join(sub, name="sub")
        done = asyncio.Event()
        seen, _ = await asyncio.gather(collect(sub, done), publish_many(target, n, done))
        await eventually(lambda: target.truth()["sub"]["delivered"] == n, "held messages flushed")
        seen += await collect(sub, done)
    # What a subscriber can see for itself, counted the way a fan-out probe counts it.
    first: set[str] = set()
    duplicates = reordered = 0
    highest = -1
    for ident in seen:
        if ident in first:
            duplicates += 1
            continue
        first.add(ident)
        if int(ident) < highest:
            reordered += 1
        highest = max(highest, int(ident))
    truth = target.truth()["sub"]
    assert len(first) == n
    assert duplicates == truth["duplicated"] > 0
    assert reordered == truth["reordered"] > 0
    assert truth["dropped"] == 0


async def test_undelivered_when_the_subscriber_leaves_first() -> None:
    async with PubSubTarget(delay=1.0) as target, dial(target.url) as pub:
        await join(pub)
        async with dial(target.url) as sub:
            await join(sub, name="gone")
            await request(pub, type="publish", room="r", id="late")
        await eventually(lambda: target.sessions == 1, "the subscriber to be forgotten")
    truth = target.truth()["gone"]
    assert truth["undelivered"] == 1
    assert truth["delivered"] == 0


async def test_chatter_is_other_room_traffic(target: PubSubTarget) -> None:
    async with dial(target.url) as sub:
        await join(sub, name="sub")
        target.set_faults(chatter_interval=0.05)
        msg = await recv(sub)
        assert msg["from"] == "chatter"
        assert msg["id"].startswith("chatter-")
        target.stop_chatter()
    assert target.truth()["sub"]["chatter"] >= 1
    with pytest.raises(ValueError, match="chatter"):
        target.set_faults(chatter_interval=0)
    with pytest.raises(ValueError, match="drop"):
        target.set_faults(drop=1.5)


async def test_http_control(target: PubSubTarget) -> None:
    control = target.control_url
    async with aiohttp.ClientSession() as http, dial(target.url) as sub:
        await join(sub, name="sub")
        async with http.get(control + "status") as r:
            status = await r.json()
        assert status["sessions"] == 1
        assert status["rooms"] == {"r": 1}
        assert status["faults"]["drop"] == 0

        fault = {"drop": 1, "delay": 0.01, "echo_to_sender": True, "chatter_interval": None}
        async with http.post(control + "fault", json=fault) as r:
            assert r.status == 200
            assert (await r.json())["faults"]["drop"] == 1
        await request(sub, type="publish", room="r", id="gone")
        async with http.get(control + "truth") as r:
            truth = await r.json()
        assert truth["published"] == 1
        assert truth["subscribers"]["sub"]["dropped_ids"] == ["gone"]

        for bad in ({"drop": 2}, {"delay": -1}, {"nope": 1}, {"reason": "x"}, {"close": 1006}):
            async with http.post(control + "fault", json=bad) as r:
                assert r.status == 400, bad
        assert target.drop == 1

        async with http.post(control + "heal") as r:
            assert (await r.json())["faults"]["drop"] == 0
        async with http.post(control + "fault", json={"close": 4002, "reason": "bye"}) as r:
            assert r.status == 200
        with pytest.raises(ConnectionClosed) as caught:
            await recv(sub)
        assert caught.value.rcvd is not None
        assert caught.value.rcvd.code == 4002


def test_cli_entry() -> None:
    argv = ["target", "pubsub", "--drop", "0.1", "--reorder", "0.05", "--echo-to-sender"]
    args = build_parser(argv).parse_args(argv)
    assert args.drop == 0.1
    assert args.echo_to_sender
    assert args.require_join
    assert args.answer_joins
    bad = ["target", "pubsub", "--drop", "2"]
    with pytest.raises(SystemExit):
        build_parser(bad).parse_args(bad)


async def test_filter_and_templates_against_an_ack_plus_broadcast_room() -> None:
    """The issue's first case: acks and broadcasts of the same id plus chatter. With a reply
    filter on type == "ack" each message has exactly one reply; all else is ignored as filtered,
    none as missing_field. The join is a templated setup step whose reply yields a capture."""
    replies = Filter("id", [equals("type", "ack")])
    joined = Filter(None, [equals("type", "joined")], {"room": "room"})
    join_step = Template('{"type":"join","room":"{probe}-room","name":"{probe}"}')
    publish = Template('{"type":"publish","room":"{room}","id":"{id}","seq":{seq}}')
    n = 50
    target = PubSubTarget(echo_to_sender=True, chatter_interval=0.01)
    async with target, dial(target.url) as ws:
        await ws.send(join_step.render({"probe": 'chat "eu"'}))
        verdict = joined.classify(await ws.recv())
        assert isinstance(verdict, Matched)
        variables = dict(verdict.captures)
        assert variables == {"room": 'chat "eu"-room'}
        answered: dict[str, int] = {}
        ignored: dict[str, int] = {}
        for seq in range(n):
            await ws.send(publish.render({**variables, "id": f"r-0-{seq}", "seq": str(seq)}))
        async with asyncio.timeout(TIMEOUT):
            while len(answered) < n or sum(ignored.values()) < n:
                result = replies.classify(await ws.recv())
                if isinstance(result, Matched):
                    assert result.id is not None
                    answered[result.id] = answered.get(result.id, 0) + 1
                else:
                    ignored[result.reason] = ignored.get(result.reason, 0) + 1
    assert answered == {f"r-0-{seq}": 1 for seq in range(n)}  # no duplicates
    assert set(ignored) == {"filtered"}
    assert ignored["filtered"] >= n  # the n broadcasts, and chatter on top


def test_cli_serves_the_target() -> None:
    """`probed target pubsub` as a user runs it: a real process, a join and a publish."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "probed", "target", "pubsub", "--port", "0", "--seed", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (ws://127\.0\.0\.1:\d+/ws)", line)
        assert match, line
        url = match.group(1)

        async def session() -> None:
            async with dial(url) as ws:
                await join(ws)
                assert await request(ws, type="publish", room="r", id=1) == {"type": "ack", "id": 1}

        asyncio.run(session())
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


async def test_broken_servers_for_bad_input_handling(target: PubSubTarget) -> None:
    async with dial(target.url) as pub, dial(target.url) as sub:
        await join(pub)
        await join(sub)
        # Echoes to the publisher only: nothing fans out.
        target.set_faults(broadcast=False)
        await request(pub, type="publish", room="r", id="self")
        assert (await recv(pub))["id"] == "self"
        await assert_silent(sub)
        # A join that is never acknowledged, nor honoured.
        target.set_faults(answer_joins=False, broadcast=True)
        await sub.send(json.dumps({"type": "join", "room": "other"}))
        await assert_silent(sub)
        assert target.members("other") == 0
        target.heal()
        assert target.faults()["answer_joins"] is True
        assert target.faults()["broadcast"] is True
        await join(sub, room="other")


async def test_jitter_reordering_matches_the_truth_exactly() -> None:
    n = 150
    async with PubSubTarget(delay=0.02, jitter=0.02, seed=3) as target, dial(target.url) as sub:
        await join(sub, name="sub")
        done = asyncio.Event()
        seen, _ = await asyncio.gather(collect(sub, done), publish_many(target, n, done))
        # On a loaded machine the quiet spell may end before the last delayed frame left.
        await eventually(lambda: target.truth()["sub"]["delivered"] == n, "every delivery written")
        seen += await collect(sub, done)
    reordered, highest = 0, -1
    for ident in seen:
        reordered += int(ident) < highest
        highest = max(highest, int(ident))
    truth = target.truth()["sub"]
    assert sorted(seen, key=int) == [str(i) for i in range(n)]
    assert reordered == truth["reordered"] > 0
    assert seen == truth["delivered_ids"]


async def test_tls() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with PubSubTarget(ssl_context=server_context) as target:
        assert target.url.startswith("wss://")
        assert target.control_url.startswith("https://")
        async with connect(target.url, ssl=client_context, open_timeout=TIMEOUT) as ws:
            await join(ws)
