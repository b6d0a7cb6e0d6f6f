import argparse
import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import trustme
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from probed.targets.echo import EchoTarget, add_arguments, serve
from tests.targets import eventually

TIMEOUT = 5.0  # generous: only reached when something is broken


@pytest.fixture
async def target() -> AsyncIterator[EchoTarget]:
    async with EchoTarget() as target:
        yield target


def dial(url: str, **kwargs: Any) -> connect:
    # The client's own keepalive pings would muddle the ping tests.
    return connect(url, ping_interval=None, open_timeout=TIMEOUT, **kwargs)


async def recv(ws: ClientConnection) -> str | bytes:
    async with asyncio.timeout(TIMEOUT):
        return await ws.recv()


async def assert_silent(ws: ClientConnection, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            await ws.recv()


async def test_echoes_text_and_binary_on_both_paths(target: EchoTarget) -> None:
    assert target.url == f"ws://127.0.0.1:{target.port}/ws"
    for url in (target.url, target.url.removesuffix("ws")):
        async with dial(url) as ws:
            await ws.send("hello")
            assert await recv(ws) == "hello"
            await ws.send(b"\x00\xff binary")
            assert await recv(ws) == b"\x00\xff binary"
    assert target.upgrades == 2


async def test_plain_http_get_on_the_websocket_path_is_426(target: EchoTarget) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{target.port}/ws") as r:
        assert r.status == 426
    assert target.upgrades == 0


async def test_delay_is_applied() -> None:
    async with EchoTarget(delay=0.2) as target, dial(target.url) as ws:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await ws.send("slow")
        assert await recv(ws) == "slow"
        assert 0.2 <= loop.time() - start < 3.0


async def test_jitter_can_reorder_replies() -> None:
    sent = [str(i) for i in range(50)]
    async with EchoTarget(delay=0.05, jitter=0.05) as target, dial(target.url) as ws:
        for message in sent:
            await ws.send(message)
        replies = [await recv(ws) for _ in sent]
    assert sorted(replies, key=int) == sent
    assert replies != sent


async def test_without_jitter_order_is_kept() -> None:
    sent = [str(i) for i in range(100)]
    async with EchoTarget(delay=0.01) as target, dial(target.url) as ws:
        for message in sent:
            await ws.send(message)
        assert [await recv(ws) for _ in sent] == sent


async def test_close_all_delivers_the_close_code(target: EchoTarget) -> None:
    async with dial(target.url) as ws:
        await eventually(lambda: target.sessions == 1, "the session to register")
        target.close_all(4001, "game day")
        with pytest.raises(ConnectionClosed) as caught:
            await recv(ws)
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 4001
    assert caught.value.rcvd.reason == "game day"
    await eventually(lambda: target.sessions == 0, "the session to be cleaned up")


@pytest.mark.parametrize(("code", "reason"), [(1005, ""), (999, ""), (5000, ""), (4000, "x" * 124)])
def test_close_all_rejects_what_cannot_be_sent(code: int, reason: str) -> None:
    with pytest.raises(ValueError, match="close"):
        EchoTarget().close_all(code, reason)


async def test_unanswered_pings_while_messages_still_echo(target: EchoTarget) -> None:
    async with dial(target.url) as ws:
        target.set_pings(False)
        unanswered = await ws.ping()
        await ws.send("still here")
        assert await recv(ws) == "still here"
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await asyncio.shield(unanswered)
        target.set_pings(True)
        async with asyncio.timeout(TIMEOUT):
            await ws.ping()
            await unanswered  # a later pong acknowledges every earlier ping


async def test_echo_off_keeps_the_session_and_answers_pings(target: EchoTarget) -> None:
    async with dial(target.url) as ws:
        target.set_echo(False)
        await ws.send("dropped")
        async with asyncio.timeout(TIMEOUT):
            await (await ws.ping())  # the server has read "dropped" by the time it pongs
        await assert_silent(ws)
        target.heal()
        await ws.send("back")
        assert await recv(ws) == "back"


async def test_echo_off_also_drops_replies_already_scheduled() -> None:
    async with EchoTarget(delay=0.3) as target, dial(target.url) as ws:
        await ws.send("in flight")
        async with asyncio.timeout(TIMEOUT):
            await (await ws.ping())
        target.set_echo(False)
        await assert_silent(ws, 0.6)


async def test_refused_upgrades_carry_status_and_retry_after(target: EchoTarget) -> None:
    target.refuse_upgrades(503, 6.2)
    with pytest.raises(InvalidStatus) as caught:
        async with dial(target.url):
            pass
    assert caught.value.response.status_code == 503
    assert caught.value.response.headers["Retry-After"] == "7"

    target.refuse_upgrades(429)
    with pytest.raises(InvalidStatus) as caught:
        async with dial(target.url):
            pass
    assert caught.value.response.status_code == 429
    assert "Retry-After" not in caught.value.response.headers

    target.refuse_upgrades(None)
    async with dial(target.url) as ws:
        await ws.send("ok")
        assert await recv(ws) == "ok"
    assert target.upgrades == 3


async def test_http_control_endpoints(target: EchoTarget) -> None:
    control = target.control_url
    assert control == f"http://127.0.0.1:{target.port}/-/"
    async with aiohttp.ClientSession() as http, dial(target.url) as ws:
        await eventually(lambda: target.sessions == 1, "the session to register")
        async with http.get(control + "status") as r:
            assert r.status == 200
            assert await r.json() == {
                "sessions": 1,
                "upgrades": 1,
                "faults": {
                    "pings": True,
                    "echo": True,
                    "upgrade_status": None,
                    "retry_after": None,
                },
            }

        fault = {"pings": False, "echo": False, "upgrade_status": 503, "retry_after": 2.5}
        async with http.post(control + "fault", json=fault) as r:
            assert r.status == 200
            assert (await r.json())["faults"] == fault
        with pytest.raises(InvalidStatus) as caught:
            async with dial(target.url):
                pass
        assert caught.value.response.headers["Retry-After"] == "3"

        async with http.post(control + "heal") as r:
            assert (await r.json())["faults"]["upgrade_status"] is None
        await ws.send("healed")
        assert await recv(ws) == "healed"

        async with http.post(control + "fault", json={"close": 4002, "reason": "ctl"}) as r:
            assert r.status == 200
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4002


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1]",
        b'{"nope": 1}',
        b'{"close": "4000"}',
        b'{"close": null}',
        b'{"close": 1006}',
        b'{"close": 4000, "reason": 7}',
        b'{"reason": "without close"}',
        b'{"pings": "no"}',
        b'{"echo": 0}',
        b'{"upgrade_status": 200}',
        b'{"upgrade_status": true}',
        b'{"upgrade_status": 503, "retry_after": -1}',
        b'{"echo": false, "upgrade_status": 99}',
    ],
)
async def test_bad_control_input_is_400_and_changes_nothing(
    target: EchoTarget, body: bytes
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(target.control_url + "fault", data=body) as r,
    ):
        assert r.status == 400
        assert (await r.json())["error"]
    assert target.faults() == {
        "pings": True,
        "echo": True,
        "upgrade_status": None,
        "retry_after": None,
    }


async def test_churn_leaks_no_sessions_or_tasks(target: EchoTarget) -> None:
    baseline = len(asyncio.all_tasks())
    for i in range(200):
        async with dial(target.url) as ws:
            await ws.send(str(i))
            assert await recv(ws) == str(i)
    await eventually(lambda: target.sessions == 0, "all sessions to be cleaned up")
    await eventually(lambda: len(asyncio.all_tasks()) <= baseline, "tasks to drain")
    assert target.upgrades == 200


async def test_stop_closes_sessions_with_1001_and_is_idempotent() -> None:
    target = EchoTarget()
    await target.start()
    async with dial(target.url) as ws:
        await eventually(lambda: target.sessions == 1, "the session to register")
        await target.stop()
        with pytest.raises(ConnectionClosed) as caught:
            await recv(ws)
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == 1001
    await target.stop()


async def test_tls() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with EchoTarget(ssl_context=server_context) as target:
        assert target.url.startswith("wss://")
        assert target.control_url.startswith("https://")
        async with dial(target.url, ssl=client_context) as ws:
            await ws.send("secret")
            assert await recv(ws) == "secret"


async def test_serve_prints_where_it_listens_and_stops_on_cancel(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--delay", "0.01", "--jitter", "0"])
    task = asyncio.create_task(serve(args))
    printed = ""

    def has_printed() -> bool:
        nonlocal printed
        printed += capsys.readouterr().out
        return "\n" in printed

    await eventually(has_printed, "the listening line")
    match = re.fullmatch(
        r"echo target listening on (ws://127\.0\.0\.1:\d+/ws) "
        r"\(control: (http://127\.0\.0\.1:\d+/-/)\)\n",
        printed,
    )
    assert match, printed
    async with dial(match[1]) as ws:
        await ws.send("cli")
        assert await recv(ws) == "cli"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_cli_rejects_negative_delay(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--delay", "-1"])
    assert "seconds" in capsys.readouterr().err
