"""The protected endpoint: a web config file with TLS, client certificates and basic auth, tested
with real TLS clients (aiohttp and the ssl module) against a real daemon."""

from __future__ import annotations

import asyncio
import base64
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import trustme

from probed.config import ConfigError
from probed.targets.echo import EchoTarget
from probed.webconfig import load_web_config
from tests.conftest import RunningDaemon, config

StartDaemon = Callable[..., Awaitable[RunningDaemon]]


def probe_yaml(url: str) -> str:
    return f"probes:\n  - {{name: a, kind: echo, url: '{url}', interval: 100ms, timeout: 1s}}\n"


@pytest.fixture
def pki(tmp_path: Path) -> tuple[trustme.CA, trustme.CA, Path]:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "server.pem")
    )
    client_ca.cert_pem.write_to_path(str(tmp_path / "clients-ca.pem"))
    return server_ca, client_ca, tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


async def status_of(url: str, ctx: ssl.SSLContext | None, auth: str | None = None) -> int:
    headers = {"Authorization": auth} if auth else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, ssl=ctx if ctx is not None else False, headers=headers) as resp,
    ):
        return resp.status


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_tls_with_required_client_certificates(
    pki: tuple[trustme.CA, trustme.CA, Path], echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    server_ca, client_ca, tmp = pki
    path = write(
        tmp / "web.yml",
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.pem\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: clients-ca.pem\n",
    )
    d = await start_daemon(config(probe_yaml(echo.url)), web_config=load_web_config(path))
    url = d.url.replace("http://", "https://") + "/-/healthy"

    without = ssl.create_default_context()
    server_ca.configure_trust(without)
    with pytest.raises(aiohttp.ClientError):
        await status_of(url, without)

    with_cert = ssl.create_default_context()
    server_ca.configure_trust(with_cert)
    client_ca.issue_cert("prometheus@example").configure_cert(with_cert)
    assert await status_of(url, with_cert) == 200

    other = ssl.create_default_context()
    server_ca.configure_trust(other)
    trustme.CA().issue_cert("mallory@example").configure_cert(other)
    with pytest.raises(aiohttp.ClientError):
        await status_of(url, other)

    # Plain HTTP on the TLS port gets nothing useful.
    with pytest.raises(aiohttp.ClientError):
        await status_of(d.url + "/-/healthy", None)


async def test_basic_auth_with_bcrypt_over_tls(
    pki: tuple[trustme.CA, trustme.CA, Path], echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    server_ca, _client_ca, tmp = pki
    hashed = bcrypt.hashpw(b"s3cret-pass", bcrypt.gensalt(rounds=4)).decode()
    path = write(
        tmp / "web.yml",
        "tls_server_config: {cert_file: server.pem, key_file: server.pem}\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n",
    )
    d = await start_daemon(config(probe_yaml(echo.url)), web_config=load_web_config(path))
    url = d.url.replace("http://", "https://") + "/metrics"
    ctx = ssl.create_default_context()
    server_ca.configure_trust(ctx)
    assert await status_of(url, ctx) == 401
    assert await status_of(url, ctx, basic("prometheus", "wrong")) == 401
    assert await status_of(url, ctx, basic("nobody", "s3cret-pass")) == 401
    assert await status_of(url, ctx, "Basic !!!notbase64") == 401
    statuses = await asyncio.gather(
        *(status_of(url, ctx, basic("prometheus", "s3cret-pass")) for _ in range(5))
    )
    assert statuses == [200] * 5


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        ("tls_server_config:\n  cert_file: server.pem\n  keyfile: x\n", 3, "unknown key"),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.pem\n"
            "  client_auth_type: RequireAnyClientCert\n  client_ca_file: clients-ca.pem\n",
            4,
            "not supported",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.pem\n"
            "  client_auth_type: RequireAndVerifyClientCert\n",
            1,
            "client_ca_file",
        ),
        ("basic_auth_users:\n  bob: plaintext\n", 2, "bcrypt hash"),
        ("tls_server_config:\n  cert_file: missing.pem\n  key_file: server.pem\n", 2, "exist"),
    ],
)
def test_bad_web_configs_are_config_errors_with_lines(
    pki: tuple[trustme.CA, trustme.CA, Path], text: str, where: int, says: str
) -> None:
    _server_ca, _client_ca, tmp = pki
    with pytest.raises(ConfigError) as caught:
        load_web_config(write(tmp / "web.yml", text))
    rendered = str(caught.value)
    assert says in rendered and f"web.yml:{where}:" in rendered, rendered


async def test_check_validates_a_web_config(pki: tuple[trustme.CA, trustme.CA, Path]) -> None:
    _server_ca, _client_ca, tmp = pki
    good = write(
        tmp / "good.yml", "tls_server_config: {cert_file: server.pem, key_file: server.pem}\n"
    )
    bad = write(tmp / "bad.yml", "tls_server_config: {cert_file: server.pem}\n")
    for path, code in ((good, 0), (bad, 1)):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "probed",
            "check",
            "--web.config.file",
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == code, (out, err)
    assert b"bad.yml:1: tls_server_config.key_file: required key is missing" in err
