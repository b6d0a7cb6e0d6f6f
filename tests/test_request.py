"""What the probe puts on the wire: headers, credentials, subprotocols, and the TLS options.

Secrets must reach the server (and nothing else: see test_cli's canary test), so a real server
records each upgrade request here.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.typing import Subprotocol

from probed import __version__
from probed.config import parse_config
from probed.targets.echo import EchoTarget
from tests.conftest import RunningDaemon, config, wait_until

StartDaemon = Callable[..., Awaitable[RunningDaemon]]


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, Headers]] = []
        self.subprotocols: list[str | None] = []
        self.url = ""


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        rec.requests.append((ws.request.path, ws.request.headers))
        rec.subprotocols.append(ws.subprotocol)
        async for message in ws:
            await ws.send(message)

    async with serve(
        handler, "127.0.0.1", 0, subprotocols=[Subprotocol("chat.v2"), Subprotocol("chat.v1")]
    ) as server:
        rec.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        yield rec


async def test_headers_token_and_subprotocols_reach_the_server(
    tmp_path: Path, recorder: Recorder, start_daemon: StartDaemon
) -> None:
    (tmp_path / "token").write_text("tok-from-file\n")
    text = f"""
probes:
  - name: p
    kind: echo
    url: {recorder.url}/chat?room=7
    headers: {{X-Api-Key: "${{KEY}}", Origin: "https://probe.example"}}
    bearer_token_file: {tmp_path / "token"}
    subprotocols: [chat.v1]
    interval: 100ms
"""
    cfg = parse_config(text, source="<test>", env={"KEY": "k-from-env"})
    d = await start_daemon(cfg)
    await wait_until(lambda: d.count("probe_messages_received_total", probe="p") >= 1)
    path, headers = recorder.requests[0]
    assert path == "/chat?room=7"  # the query reaches the server even though labels drop it
    assert headers["Authorization"] == "Bearer tok-from-file"
    assert headers["X-Api-Key"] == "k-from-env"
    assert headers["Origin"] == "https://probe.example"
    assert headers["User-Agent"] == f"probed/{__version__}"
    assert headers["Sec-WebSocket-Protocol"] == "chat.v1"
    assert recorder.subprotocols == ["chat.v1"]
    assert "permessage-deflate" not in headers.get("Sec-WebSocket-Extensions", "")
    assert d.value("probe_info", probe="p", target=f"{recorder.url}/chat") == 1


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_ca(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


async def test_client_certificate(
    ca: trustme.CA, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client = ca.issue_cert("probe-client")
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(cert_file))
    client.private_key_pem.write_to_path(str(key_file))
    ca_file = write_ca(ca, tmp_path)

    async with EchoTarget(ssl_context=server_ctx) as secure:
        tls_with = f"{{ca_file: {ca_file}, cert_file: {cert_file}, key_file: {key_file}}}"
        text = f"""
probes:
  - {{name: with-cert, kind: echo, url: "{secure.url}", interval: 100ms, tls: {tls_with}}}
  - name: without-cert
    kind: echo
    url: "{secure.url}"
    interval: 100ms
    tls: {{ca_file: {ca_file}}}
    connection: {{reconnect: {{initial: 100ms, max: 200ms}}}}
"""
        d = await start_daemon(config(text))
        await wait_until(lambda: d.count("probe_messages_received_total", probe="with-cert") >= 1)
        # TLS 1.3 reports a refused client certificate after the client's handshake is done,
        # so it can surface as a TLS error or as a failed upgrade; never as a usable session.
        await wait_until(
            lambda: (
                sum(
                    d.count("probe_connect_errors_total", probe="without-cert", reason=r)
                    for r in ("tls", "reset", "protocol_error")
                )
                >= 2
            ),
            what="refused client",
        )
        assert d.count("probe_messages_received_total", probe="without-cert") == 0


async def test_server_name_override(
    ca: trustme.CA, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("echo.internal").configure_cert(server_ctx)
    ca_file = write_ca(ca, tmp_path)
    async with EchoTarget(ssl_context=server_ctx) as secure:
        text = f"""
probes:
  - name: named
    kind: echo
    url: "{secure.url}"
    interval: 100ms
    tls: {{ca_file: {ca_file}, server_name: echo.internal}}
  - name: unnamed
    kind: echo
    url: "{secure.url}"
    interval: 100ms
    tls: {{ca_file: {ca_file}}}
    connection: {{reconnect: {{initial: 100ms, max: 200ms}}}}
"""
        d = await start_daemon(config(text))
        await wait_until(lambda: d.count("probe_messages_received_total", probe="named") >= 1)
        await wait_until(
            lambda: d.count("probe_connect_errors_total", probe="unnamed", reason="tls") >= 1
        )
