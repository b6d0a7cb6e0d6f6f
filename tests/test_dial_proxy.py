"""Dialing through an HTTP CONNECT proxy: a real one (Debian's tinyproxy) on loopback."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from probed import logs
from probed.config import EchoProbeConfig
from probed.connection import Supervisor
from probed.dial import ConnectError, Dialer
from probed.metrics import ProbeMetrics
from probed.targets.echo import EchoTarget
from tests.conftest import bound, config

pytestmark = pytest.mark.skipif(
    shutil.which("tinyproxy") is None, reason="tinyproxy not installed (tests/run.sh installs it)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _tinyproxy(tmp: Path, auth: tuple[str, str] | None) -> AsyncIterator[int]:
    port = _free_port()
    conf = tmp / "tinyproxy.conf"
    lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 30", "Allow 127.0.0.1", "LogLevel Info"]
    if auth:
        lines.append(f"BasicAuth {auth[0]} {auth[1]}")
    conf.write_text("\n".join(lines) + "\n")
    proc = await asyncio.create_subprocess_exec(
        "tinyproxy",
        "-d",
        "-c",
        str(conf),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(bound(10)):
            while True:
                try:
                    _r, w = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                w.close()
                break
        yield port
    finally:
        proc.terminate()
        await proc.wait()


@pytest.fixture
async def proxy_port(tmp_path: Path) -> AsyncIterator[int]:
    async for port in _tinyproxy(tmp_path, None):
        yield port


@pytest.fixture
async def auth_proxy_port(tmp_path: Path) -> AsyncIterator[int]:
    async for port in _tinyproxy(tmp_path, ("probe", "s3cret")):
        yield port


def endpoint(url: str, extra: str) -> EchoProbeConfig:
    cfg = config(f"probes:\n  - name: p\n    kind: echo\n    url: {url}\n{extra}").probes[0]
    assert isinstance(cfg, EchoProbeConfig)
    return cfg


async def test_the_echo_session_goes_through_the_proxy(proxy_port: int) -> None:
    async with EchoTarget() as echo:
        cfg = endpoint(echo.url, f"    proxy_url: http://127.0.0.1:{proxy_port}\n")
        dialer = Dialer(cfg)
        conn = await dialer.dial()
        await conn.send("through")
        assert await conn.recv() == "through"
        await conn.close()
        assert list(dialer.phases) == ["dns", "tcp", "proxy", "upgrade"]
        assert echo.upgrades == 1


async def test_a_proxy_that_wants_credentials_refuses_without_and_passes_with(
    auth_proxy_port: int,
) -> None:
    async with EchoTarget() as echo:
        bare = endpoint(echo.url, f"    proxy_url: http://127.0.0.1:{auth_proxy_port}\n")
        with pytest.raises(ConnectError) as refused:
            await Dialer(bare).dial()
        assert refused.value.reason == "proxy" and "407" in refused.value.detail
        good = endpoint(
            echo.url, f"    proxy_url: http://probe:s3cret@127.0.0.1:{auth_proxy_port}\n"
        )
        conn = await Dialer(good).dial()
        await conn.close()
        assert echo.upgrades == 1


async def test_proxy_from_the_environment_and_no_proxy(
    proxy_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with EchoTarget() as echo:
        cfg = endpoint(echo.url, "    proxy_from_env: true\n")
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy_port}")
        monkeypatch.setenv("NO_PROXY", "")
        dialer = Dialer(cfg)
        await (await dialer.dial()).close()
        assert "proxy" in dialer.phases
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        direct = Dialer(cfg)
        await (await direct.dial()).close()
        assert "proxy" not in direct.phases


async def test_a_dead_proxy_is_a_connect_error_counted_by_the_supervisor() -> None:
    cfg = endpoint("ws://127.0.0.1:9/", f"    proxy_url: http://127.0.0.1:{_free_port()}\n")
    metrics = ProbeMetrics("p", kind="echo", target=cfg.target)

    class Idle:
        async def setup(self, session: object) -> None: ...
        async def serve(self, session: object) -> None: ...
        async def drain(self, session: object) -> None: ...
        def ended(self, session: object, reason: str) -> None: ...

    sup = Supervisor(cfg, metrics=metrics.session(), handler=Idle(), log=logs.get(probe="p"))
    with pytest.raises(ConnectError) as caught:
        await sup.connect()
    assert caught.value.reason == "refused" and caught.value.phase == "tcp"


def test_userinfo_and_a_bearer_token_together_are_refused_at_check_time() -> None:
    with pytest.raises(Exception, match="user:password@ and a bearer token"):
        endpoint("ws://u:p@127.0.0.1:9/", "    bearer_token: abc\n")
    with pytest.raises(Exception, match="must be an http:// proxy URL"):
        endpoint("ws://127.0.0.1:9/", "    proxy_url: socks5://127.0.0.1:1080\n")
