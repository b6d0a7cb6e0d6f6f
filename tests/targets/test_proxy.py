import argparse
import asyncio
import re
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from probed.targets.control import HttpServer
from probed.targets.echo import EchoTarget
from probed.targets.proxy import FaultProxy, add_arguments, control_app, host_port, serve
from tests.targets import eventually

TIMEOUT = 5.0  # generous: only reached when something is broken
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def upstream() -> AsyncIterator[int]:
    """A raw TCP echo server; yields its port."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@pytest.fixture
async def proxy(upstream: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", upstream) as proxy:
        yield proxy


_dialed: list[asyncio.StreamWriter] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    for writer in _dialed:
        writer.close()
    _dialed.clear()


async def dial(proxy: FaultProxy) -> Stream:
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection(*proxy.address)
    _dialed.append(writer)
    return reader, writer


async def exchange(stream: Stream, data: bytes = b"ping") -> None:
    reader, writer = stream
    writer.write(data)
    async with asyncio.timeout(TIMEOUT):
        assert await reader.readexactly(len(data)) == data


async def assert_silent(reader: asyncio.StreamReader, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            await reader.read(1)


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """Everything until EOF; a reset surfaces as ConnectionResetError."""
    async with asyncio.timeout(TIMEOUT):
        return await reader.read()


async def test_forwards_both_ways(proxy: FaultProxy) -> None:
    stream = await dial(proxy)
    await exchange(stream, b"hello")
    await exchange(stream, b"x" * 300_000)
    assert proxy.connections_total == 1
    assert proxy.active == 1
    stream[1].close()
    await eventually(lambda: proxy.active == 0, "the link to close")


async def test_reset_aborts_current_connections_and_keeps_accepting(proxy: FaultProxy) -> None:
    reader, _ = stream = await dial(proxy)
    await exchange(stream)
    proxy.reset()
    with pytest.raises(ConnectionResetError):
        await read_to_end(reader)
    await eventually(lambda: proxy.active == 0, "the link to go away")
    await exchange(await dial(proxy))


async def test_blackhole_holds_data_without_closing(proxy: FaultProxy) -> None:
    before = await dial(proxy)
    await exchange(before)
    proxy.blackhole()
    during = await dial(proxy)  # accepted, but blackholed too
    for reader, writer in (before, during):
        writer.write(b"held")
        await assert_silent(reader)
        assert not reader.at_eof()
    assert proxy.active == 2
    proxy.heal()
    for reader, _ in (before, during):
        # Nothing was dropped: the byte stream resumes intact.
        async with asyncio.timeout(TIMEOUT):
            assert await reader.readexactly(4) == b"held"


async def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    stream = await dial(proxy)
    await exchange(stream)
    proxy.set_latency(0.2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await exchange(stream, b"a" * 1000)
    assert 0.4 <= loop.time() - start < 4.0


async def test_latency_keeps_order(proxy: FaultProxy) -> None:
    reader, writer = await dial(proxy)
    proxy.set_latency(0.05)
    sent = b"".join(b"%05d" % i for i in range(200))
    for i in range(0, len(sent), 5):
        writer.write(sent[i : i + 5])
        await writer.drain()
    async with asyncio.timeout(TIMEOUT):
        assert await reader.readexactly(len(sent)) == sent


async def test_throttle_caps_the_rate(proxy: FaultProxy) -> None:
    stream = await dial(proxy)
    proxy.throttle(100_000)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await exchange(stream, b"t" * 60_000)
    # ~0.6 s at the cap; the first slice may leave at once, and CI machines are noisy.
    assert 0.4 <= loop.time() - start < 5.0
    proxy.throttle(None)
    await exchange(stream, b"u" * 60_000)


async def test_close_after_counts_both_directions_and_ends_with_fin(proxy: FaultProxy) -> None:
    proxy.close_after(8)
    reader, writer = await dial(proxy)
    writer.write(b"abcd")  # 4 bytes up, 4 echoed back: 8
    assert await read_to_end(reader) == b"abcd"
    await eventually(lambda: proxy.active == 0, "the link to close")


async def test_close_after_closes_connections_already_past_the_budget(proxy: FaultProxy) -> None:
    reader, _ = stream = await dial(proxy)
    await exchange(stream, b"0123456789")
    proxy.close_after(30)
    await exchange(stream, b"x")  # 22 bytes forwarded: still under budget
    proxy.close_after(5)
    assert await read_to_end(reader) == b""


async def test_refuse_then_heal_on_the_same_port(proxy: FaultProxy) -> None:
    existing = await dial(proxy)
    address = proxy.address
    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        await dial(proxy)
    await exchange(existing)  # existing connections are untouched
    proxy.heal()
    assert proxy.address == address
    await exchange(await dial(proxy))  # no wait: heal() is listening before it returns


async def test_refuse_and_heal_back_to_back(proxy: FaultProxy) -> None:
    # Toggling faster than the accept loop starts must not leave a stray listener behind.
    for _ in range(5):
        proxy.heal()
        proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        await dial(proxy)
    proxy.refuse(False)
    await exchange(await dial(proxy))


async def test_upstream_down_resets_the_client() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        dead_port = placeholder.getsockname()[1]
    async with FaultProxy("127.0.0.1", dead_port) as proxy:
        reader, _ = await dial(proxy)
        with pytest.raises(ConnectionResetError):
            await read_to_end(reader)
        await eventually(lambda: proxy.active == 0, "the failed link to go away")


async def test_soak_leaks_no_links_or_tasks(proxy: FaultProxy) -> None:
    baseline = len(asyncio.all_tasks())
    for i in range(300):
        stream = await dial(proxy)
        await exchange(stream, b"%d" % i)
        writer = stream[1]
        writer.close()
        await writer.wait_closed()
    await eventually(lambda: proxy.active == 0, "every link to close")
    await eventually(lambda: len(asyncio.all_tasks()) <= baseline, "tasks to drain")
    assert proxy.connections_total == 300


async def test_stop_is_idempotent_and_closes_everything(upstream: int) -> None:
    proxy = FaultProxy("127.0.0.1", upstream)
    await proxy.start()
    reader, _ = stream = await dial(proxy)
    await exchange(stream)
    await proxy.stop()
    assert proxy.active == 0
    with pytest.raises(ConnectionResetError):
        await read_to_end(reader)
    with pytest.raises(ConnectionRefusedError):
        await dial(proxy)
    await proxy.stop()


async def test_websocket_session_through_the_proxy() -> None:
    async with EchoTarget() as target, FaultProxy("127.0.0.1", target.port) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/ws"
        async with connect(url, ping_interval=None, open_timeout=TIMEOUT) as ws:
            await ws.send("through")
            async with asyncio.timeout(TIMEOUT):
                assert await ws.recv() == "through"
            proxy.reset()
            with pytest.raises(ConnectionClosed) as caught:
                async with asyncio.timeout(TIMEOUT):
                    await ws.recv()
            assert caught.value.rcvd is None  # no close frame: the TCP connection was reset


async def test_http_control(proxy: FaultProxy) -> None:
    server = HttpServer(control_app(proxy), "127.0.0.1", 0)
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def post(path: str, body: object = None, status: int = 200) -> dict[str, object]:
                async with http.post(base + path, json=body) as r:
                    assert r.status == status, await r.text()
                    result: dict[str, object] = await r.json()
                    return result

            status = await post("/latency", {"seconds": 0.01})
            assert status["faults"] == {
                "blackhole": False,
                "latency": 0.01,
                "bytes_per_second": None,
                "close_after": None,
                "refuse": False,
            }
            await post("/throttle", {"bytes_per_second": 1e6})
            await post("/close-after", {"bytes": 1000})
            await post("/blackhole")
            status = await post("/refuse", {"on": True})
            assert status["faults"] == {
                "blackhole": True,
                "latency": 0.01,
                "bytes_per_second": 1e6,
                "close_after": 1000,
                "refuse": True,
            }
            with pytest.raises(ConnectionRefusedError):
                await dial(proxy)
            await post("/heal")
            stream = await dial(proxy)
            await exchange(stream)
            status = await post("/reset")
            with pytest.raises(ConnectionResetError):
                await read_to_end(stream[0])
            async with http.get(base + "/status") as r:
                status = await r.json()
            assert status["connections_total"] == 1
            assert not any(status["faults"][k] for k in ("blackhole", "latency", "refuse"))

            for path, body in [
                ("/latency", {}),
                ("/latency", {"seconds": -1}),
                ("/latency", {"seconds": "1"}),
                ("/throttle", {"bytes_per_second": 0}),
                ("/throttle", {}),
                ("/close-after", {"bytes": -1}),
                ("/close-after", {"bytes": 1.5}),
                ("/blackhole", {"on": "yes"}),
                ("/refuse", {"of": True}),
                ("/reset", {"now": True}),
            ]:
                error = await post(path, body, status=400)
                assert error["error"]
    finally:
        await server.stop()


async def test_serve_prints_both_addresses_and_stops_on_cancel(
    upstream: int, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    task = asyncio.create_task(serve(parser.parse_args(["--upstream", f"127.0.0.1:{upstream}"])))
    printed = ""

    def has_printed() -> bool:
        nonlocal printed
        printed += capsys.readouterr().out
        return "\n" in printed

    await eventually(has_printed, "the listening line")
    match = re.fullmatch(
        rf"fault proxy listening on 127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:{upstream} "
        r"\(control: (http://127\.0\.0\.1:\d+/)\)\n",
        printed,
    )
    assert match, printed
    stream = await asyncio.open_connection("127.0.0.1", int(match[1]))
    _dialed.append(stream[1])
    await exchange(stream)
    async with aiohttp.ClientSession() as http, http.get(match[2] + "status") as r:
        assert (await r.json())["active"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_host_port() -> None:
    assert host_port("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert host_port("[::1]:0") == ("::1", 0)
    for bad in ("8080", ":80", "host:", "host:http", "host:70000"):
        with pytest.raises(argparse.ArgumentTypeError):
            host_port(bad)
