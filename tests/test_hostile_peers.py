"""Hostile far ends: each test is a real server on port 0 that attacks the probe in one way.

For every class the reason label is asserted, the daemon stays up (no probe restart), a healthy
probe beside the attacked one keeps measuring, and memory stays within a generous bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from probed.config import EchoProbeConfig
from probed.dial import ConnectError, Dialer
from probed.metrics import DISTINCT_NETWORK_VALUES
from probed.targets.echo import EchoTarget
from tests.conftest import RunningDaemon, bound, config, wait_until
from tests.test_reconnect import RawServer, complete_upgrade, read_request

StartDaemon = Callable[..., Awaitable[RunningDaemon]]
CANARY = "canary-s3cr3t-7f3a9"
# Generous: the flood would add ~50 MB/s (1.3 GB before the fix); this catches any unbounded
# growth while tolerating allocator noise on a shared machine.
MEMORY_BOUND = 150 * 1024 * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def two_probes(victim_url: str, healthy_url: str, victim_extra: str = "") -> str:
    return f"""probes:
  - name: victim
    kind: echo
    url: {victim_url}
    interval: 100ms
    timeout: 1s
    connection: {{reconnect: {{initial: 200ms, max: 1s}}}}
{victim_extra}  - name: healthy
    kind: echo
    url: {healthy_url}
    interval: 50ms
    timeout: 1s
"""


def metric(d: RunningDaemon, name: str, probe: str, **labels: str) -> float:
    return d.count(name, probe=probe, **labels)


async def healthy_still_measures(d: RunningDaemon) -> None:
    before = metric(d, "probe_messages_received_total", "healthy")
    await wait_until(
        lambda: metric(d, "probe_messages_received_total", "healthy") >= before + 5,
        what="the healthy probe still measuring",
    )


def ping_frame(payload: bytes = b"x" * 125) -> bytes:
    # Unmasked (server to client) ping with the largest control payload.
    return b"\x89" + bytes([len(payload)]) + payload


async def _flood_pings(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await complete_upgrade(reader, writer)
    burst = ping_frame() * 512
    while True:
        writer.write(burst)
        await writer.drain()


@pytest.mark.parametrize("keepalive", ["", "    connection: {keepalive: off}\n"])
async def test_ping_flood_from_a_peer_that_never_reads_is_a_bounded_flood(
    echo: EchoTarget, start_daemon: StartDaemon, keepalive: str
) -> None:
    async with RawServer(_flood_pings) as server:
        text = two_probes(server.url(), echo.url)
        if keepalive:
            text = text.replace(
                "    connection: {reconnect: {initial: 200ms, max: 1s}}\n",
                "    connection: {keepalive: off, reconnect: {initial: 200ms, max: 1s}}\n",
            )
        start_rss = rss_bytes()
        d = await start_daemon(config(text))
        await wait_until(
            lambda: metric(d, "probe_disconnects_total", "victim", reason="flood") >= 3,
            what="three sessions ended as flood",
        )
        await healthy_still_measures(d)
        assert rss_bytes() - start_rss < MEMORY_BOUND
        # The flood no longer starves the loop: the healthy probe's measurements are kept.
        tainted = metric(d, "probe_measurements_tainted_total", "healthy")
        assert tainted <= metric(d, "probe_messages_received_total", "healthy") / 2
        assert d.count("probed_probe_restarts_total", probe="victim") == 0
        assert metric(d, "probe_disconnects_total", "victim", reason="shutdown") == 0


async def test_ping_flood_that_reads_our_pongs_is_still_a_flood(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    async def flood_and_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await complete_upgrade(reader, writer)
        drain = asyncio.create_task(reader.read(1 << 30))
        try:
            while True:
                writer.write(ping_frame(b"p") * 64)
                await writer.drain()
                await asyncio.sleep(0)
        finally:
            drain.cancel()

    async with RawServer(flood_and_read) as server:
        d = await start_daemon(config(two_probes(server.url(), echo.url)))
        await wait_until(
            lambda: metric(d, "probe_disconnects_total", "victim", reason="flood") >= 1,
            what="the control-frame flood ended the session",
        )
        await healthy_still_measures(d)
        assert d.count("probed_probe_restarts_total", probe="victim") == 0


def _deep_reply(depth: int) -> Callable[[ServerConnection], Awaitable[None]]:
    async def handler(ws: ServerConnection) -> None:
        async for _message in ws:
            await ws.send("[" * depth + "]" * depth)
            await ws.send('{"id": ' + "[" * 100 + "]" * 100 + "}")

    return handler


async def test_deeply_nested_json_replies_are_unmatched_not_a_crash(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    async with serve(_deep_reply(200_000), "127.0.0.1", 0, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        d = await start_daemon(config(two_probes(f"ws://127.0.0.1:{port}/", echo.url)))
        await wait_until(
            lambda: metric(d, "probe_messages_unmatched_total", "victim", reason="too_deep") >= 6,
            what="deep replies counted as too_deep",
        )
        await healthy_still_measures(d)
        assert d.count("probed_probe_restarts_total", probe="victim") == 0
        for reason in ("error", "shutdown", "protocol_error"):
            assert metric(d, "probe_disconnects_total", "victim", reason=reason) == 0
        assert metric(d, "probe_connections_open", "victim") == 1


async def test_secret_reflected_in_the_close_reason_is_scrubbed_everywhere(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    async def reflect(ws: ServerConnection) -> None:
        auth = ws.request.headers.get("Authorization", "") if ws.request else ""
        await ws.close(4000, f"you sent {auth}\n[error] forged log line"[:120])

    async with serve(reflect, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        extra = f"    bearer_token: {CANARY}\n"
        with capture_logs() as logged:
            d = await start_daemon(
                config(two_probes(f"ws://127.0.0.1:{port}/", echo.url, victim_extra=extra))
            )
            await wait_until(
                lambda: metric(d, "probe_disconnects_total", "victim", reason="server_close") >= 2,
                what="reflected closes",
            )
        status = next(p.status for p in d.daemon.exposition.probes() if p.name == "victim")
        assert status.last_close is not None
        assert "<redacted>" in status.last_close.detail
        assert "\n" not in status.last_close.detail
        shown = json.dumps([str(e) for e in logged]) + repr(status)
        assert CANARY not in shown
        assert CANARY not in await d.scrape()


async def test_secret_quoted_back_in_a_handshake_header_is_scrubbed(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    async def bad_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await read_request(reader)).decode("latin-1")
        auth = next(
            line.split(":", 1)[1].strip()
            for line in request.split("\r\n")
            if line.lower().startswith("authorization:")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + auth.encode() + b"\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    async with RawServer(bad_accept) as server:
        extra = f"    bearer_token: {CANARY}\n"
        with capture_logs() as logged:
            d = await start_daemon(config(two_probes(server.url(), echo.url, victim_extra=extra)))
            await wait_until(
                lambda: (
                    metric(d, "probe_connect_errors_total", "victim", reason="protocol_error") >= 1
                ),
                what="the bad accept counted",
            )
        status = next(p.status for p in d.daemon.exposition.probes() if p.name == "victim")
        assert status.last_error is not None and "<redacted>" in status.last_error.detail
        assert CANARY not in json.dumps([str(e) for e in logged]) + repr(status)
        await healthy_still_measures(d)


@pytest.mark.parametrize("kind", ["endless", "long_line"])
async def test_endless_or_oversized_upgrade_headers_are_a_protocol_error(
    echo: EchoTarget, start_daemon: StartDaemon, kind: str
) -> None:
    async def headers_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\n")
        chunk = b"X-Pad: y\r\n" * 100 if kind == "endless" else b"X-Pad: " + b"y" * 4096
        while True:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.001)

    async with RawServer(headers_forever) as server:
        d = await start_daemon(config(two_probes(server.url(), echo.url)))
        await wait_until(
            lambda: metric(d, "probe_connect_errors_total", "victim", reason="protocol_error") >= 2,
            what="protocol errors counted",
        )
        assert metric(d, "probe_connect_errors_total", "victim", reason="timeout") == 0
        await healthy_still_measures(d)


async def test_out_of_descriptors_while_dialling_is_a_resources_connect_error(
    echo: EchoTarget,
) -> None:
    cfg = config(two_probes(echo.url, echo.url)).probes[0]
    assert isinstance(cfg, EchoProbeConfig)
    dialer = Dialer(cfg)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
    fillers: list[int] = []
    try:
        # Use up every descriptor left under the limit, gaps included.
        with pytest.raises(OSError):
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        with pytest.raises(ConnectError) as caught:
            await dialer.dial()
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert caught.value.reason == "resources"
    assert caught.value.phase == "tcp"
    conn = await dialer.dial()  # and with descriptors back, it connects again
    await conn.close()


async def test_probed_once_never_prints_a_reflected_secret(tmp_path: Path) -> None:
    async def reflect(ws: ServerConnection) -> None:
        auth = ws.request.headers.get("Authorization", "") if ws.request else ""
        await ws.recv()
        await ws.close(4000, f"you sent {auth}"[:120])

    async def bad_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await read_request(reader)).decode("latin-1")
        auth = next(
            line.split(":", 1)[1].strip()
            for line in request.split("\r\n")
            if line.lower().startswith("authorization:")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + auth.encode() + b"\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    async with serve(reflect, "127.0.0.1", 0) as server, RawServer(bad_accept) as raw:
        port = server.sockets[0].getsockname()[1]
        path = tmp_path / "once.yaml"
        path.write_text(
            "probes:\n"
            f"  - {{name: closes, kind: echo, url: 'ws://127.0.0.1:{port}/',"
            f" bearer_token: {CANARY}, timeout: 2s}}\n"
            f"  - {{name: accepts, kind: echo, url: '{raw.url()}',"
            f" bearer_token: {CANARY}, timeout: 2s}}\n"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "probed",
            "--log-format",
            "json",
            "once",
            "-c",
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), bound(30))
    text = (out + err).decode()
    assert proc.returncode == 1
    assert CANARY not in text
    assert text.count("<redacted>") >= 2, text


def _new_close_code_each_session() -> Callable[[ServerConnection], Awaitable[None]]:
    codes = iter(range(3000, 5000))

    async def handler(ws: ServerConnection) -> None:
        await ws.close(code=next(codes), reason="a series per session?")

    return handler


def _new_status_each_upgrade() -> Callable[[ServerConnection, Request], Response]:
    statuses = iter(range(400, 1000))

    def refuse(connection: ServerConnection, request: Request) -> Response:
        return Response(next(statuses), "Refused", Headers([("Content-Length", "0")]), b"")

    return refuse


def label_values(d: RunningDaemon, name: str, label: str, probe: str) -> set[str]:
    return {
        sample.labels[label]
        for family in d.daemon.exposition.collect()
        for sample in family.samples
        if sample.name == name and sample.labels.get("probe") == probe and sample.value > 0
    }


FAST_RECONNECT = "    connection: {reconnect: {initial: 10ms, max: 20ms}}\n"


async def test_a_new_close_code_every_session_cannot_mint_series(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    async with serve(_new_close_code_each_session(), "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        text = two_probes(f"ws://127.0.0.1:{port}/", echo.url).replace(
            "    connection: {reconnect: {initial: 200ms, max: 1s}}\n", FAST_RECONNECT, 1
        )
        d = await start_daemon(config(text))
        await wait_until(
            lambda: metric(d, "probe_close_codes_total", "victim", code="other") >= 5,
            what="close codes past the distinct-value cap",
        )
        codes = label_values(d, "probe_close_codes_total", "code", "victim")
        assert len(codes) == DISTINCT_NETWORK_VALUES + 1 and "other" in codes
        assert metric(d, "probed_probe_restarts_total", "victim") == 0
        await healthy_still_measures(d)


async def test_a_new_status_every_refused_upgrade_cannot_mint_series(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    async with serve(_ignore, "127.0.0.1", 0, process_request=_new_status_each_upgrade()) as server:
        port = server.sockets[0].getsockname()[1]
        text = two_probes(f"ws://127.0.0.1:{port}/", echo.url).replace(
            "    connection: {reconnect: {initial: 200ms, max: 1s}}\n", FAST_RECONNECT, 1
        )
        d = await start_daemon(config(text))
        await wait_until(
            lambda: metric(d, "probe_connect_errors_total", "victim", reason="http_other") >= 5,
            what="statuses past the distinct-value cap",
        )
        reasons = label_values(d, "probe_connect_errors_total", "reason", "victim")
        assert len(reasons) == DISTINCT_NETWORK_VALUES + 1 and "http_other" in reasons
        await healthy_still_measures(d)


async def _ignore(ws: ServerConnection) -> None:
    await ws.wait_closed()
