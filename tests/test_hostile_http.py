"""Hostile neighbours: the HTTP port and the reload endpoint under attack.

Real daemons on port 0, real TCP clients: connection floods and slow clients must not shut out
scrapes, the lifecycle API refuses web pages and rebound names, reloads are coalesced and always
end with the right gauge and READY=1.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from probed import daemon as daemon_module
from probed.httpguard import HttpLimits
from probed.targets.echo import EchoTarget
from tests.conftest import RunningDaemon, config, wait_until

StartDaemon = Callable[..., Awaitable[RunningDaemon]]


def probe_yaml(url: str, *names: str) -> str:
    return "probes:\n" + "".join(
        f"  - {{name: {n}, kind: echo, url: '{url}', interval: 100ms, timeout: 1s}}\n"
        for n in names
    )


async def post(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.post(url, headers=headers or {}) as resp:
        return resp.status, await resp.text()


@pytest.fixture
async def reloadable(
    tmp_path: Path, echo: EchoTarget, start_daemon: StartDaemon
) -> AsyncIterator[tuple[RunningDaemon, Path]]:
    path = tmp_path / "probed.yaml"
    path.write_text(probe_yaml(echo.url, "a"))
    d = await start_daemon(config(path.read_text()), path, enable_lifecycle=True)
    yield d, path


async def test_lifecycle_api_is_off_by_default(
    tmp_path: Path, echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    path = tmp_path / "probed.yaml"
    path.write_text(probe_yaml(echo.url, "a"))
    d = await start_daemon(config(path.read_text()), path)
    status, text = await post(f"{d.url}/-/reload")
    assert status == 403 and "--web.enable-lifecycle" in text
    assert d.daemon.reloads == 0


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"Origin": "https://attacker.example"}, "Origin"),
        ({"Origin": "null"}, "Origin"),
        ({"Sec-Fetch-Site": "cross-site"}, "another site"),
        ({"Host": "attacker.example:9464"}, "Host"),
        ({"Host": "rebind.attacker.example"}, "Host"),
    ],
)
async def test_cross_site_and_rebound_reloads_are_refused(
    reloadable: tuple[RunningDaemon, Path], headers: dict[str, str], why: str
) -> None:
    d, _path = reloadable
    status, text = await post(f"{d.url}/-/reload", headers)
    assert status == 403 and why in text
    assert d.daemon.reloads == 0


async def test_same_origin_and_local_names_may_reload(
    reloadable: tuple[RunningDaemon, Path],
) -> None:
    d, _path = reloadable
    host = d.url.removeprefix("http://")
    port = host.rpartition(":")[2]
    for headers in (
        {"Origin": d.url},
        {"Host": f"localhost:{port}"},
        {"Host": f"probed.monitoring.svc:{port}"},
        {"Host": f"probed:{port}"},
        {"Sec-Fetch-Site": "same-origin"},
    ):
        status, text = await post(f"{d.url}/-/reload", headers)
        assert status == 200, (headers, text)


async def test_concurrent_reloads_are_coalesced(reloadable: tuple[RunningDaemon, Path]) -> None:
    d, path = reloadable
    path.write_text(path.read_text() + "  - {name: b, kind: echo, url: 'ws://127.0.0.1:1/'}\n")
    answers = await asyncio.gather(*(d.daemon.reload() for _ in range(200)))
    assert all(ok for ok, _ in answers)
    assert d.daemon.reloads <= 2, f"{d.daemon.reloads} reloads for 200 requests"
    assert d.value("probe_info", probe="b") == 1
    assert await d.daemon.reload() == (True, "kept: 2, started: 0, restarted: 0, stopped: 0")


async def test_a_reload_that_fails_unexpectedly_still_ends_ready_with_the_gauge_at_zero(
    reloadable: tuple[RunningDaemon, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    d, _path = reloadable
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(notify))

        async def broken(_path: Path, _running: object) -> None:
            raise RuntimeError("a bug in the loader")

        monkeypatch.setattr(daemon_module, "parse_reload", broken)
        ok, message = await d.daemon.reload()
        assert not ok and "RuntimeError" in message
        assert d.value("probed_config_last_reload_successful") == 0
        messages = []
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
    assert messages[0].startswith("RELOADING=1") and messages[-1] == "READY=1"
    assert d.value("probe_connections_open", probe="a") is not None, "the probe kept running"


async def test_a_config_that_broke_the_loader_gives_a_clean_answer(
    reloadable: tuple[RunningDaemon, Path],
) -> None:
    d, path = reloadable
    path.write_text("global:\n  labels: {when: 2024-13-45}\n" + path.read_text())
    status, text = await post(f"{d.url}/-/reload")
    assert status == 500 and ":2: global.labels.when" in text
    assert d.value("probed_config_last_reload_successful") == 0


async def test_idle_connection_flood_does_not_shut_out_scrapes(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    limits = HttpLimits(max_connections=16, idle_timeout=30.0)
    d = await start_daemon(config(probe_yaml(echo.url, "a")), http_limits=limits)
    host, port = d.url.removeprefix("http://").rsplit(":", 1)
    idle = [await asyncio.open_connection(host, int(port)) for _ in range(100)]
    try:
        await wait_until(lambda: d.daemon.http is not None and d.daemon.http.guard.open <= 16)
        for _ in range(3):
            assert "probe_info" in await d.scrape()
        assert d.daemon.http is not None and d.daemon.http.guard.evicted >= 80
    finally:
        for _reader, writer in idle:
            writer.close()


async def test_slow_request_heads_are_timed_out(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    limits = HttpLimits(idle_timeout=0.5, request_timeout=5.0)
    d = await start_daemon(config(probe_yaml(echo.url, "a")), http_limits=limits)
    host, port = d.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
    closed = False
    for i in range(400):  # a byte every 50 ms: 20 s if nobody stops it
        writer.write(head[i % len(head) : i % len(head) + 1])
        try:
            await writer.drain()
            data = await asyncio.wait_for(reader.read(1024), 0.05)
        except TimeoutError:
            continue
        except ConnectionError:
            closed = True
            break
        if data == b"":
            closed = True
            break
    writer.close()
    assert closed, "a client trickling its request head was never cut off"
    assert d.daemon.http is not None and d.daemon.http.guard.timed_out >= 1
    assert "probe_info" in await d.scrape()
