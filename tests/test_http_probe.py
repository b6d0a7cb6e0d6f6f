"""The http kind against a real aiohttp server on loopback: latency, phases, results, reasons."""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from probed import kinds, logs
from probed.config import ProbeConfig
from probed.probes.http import HttpProbe
from tests.conftest import RunningDaemon, config, parse_exposition, wait_until
from tests.test_exposition import render
from tests.test_hostile_peers import rss_bytes

StartDaemon = Callable[..., Awaitable[RunningDaemon]]
CANARY = "canary-http-5ecret"


@dataclass
class Api:
    """A small API whose delay, status and body the test sets; it records what it saw."""

    port: int = 0
    delay: float = 0.0
    status: int = 200
    body: str = '{"rooms": 3}'
    seen_auth: list[str] = field(default_factory=list)
    connections: set[int] = field(default_factory=set)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen_auth.append(request.headers.get("Authorization", ""))
        transport = request.transport
        if transport is not None:
            self.connections.add(id(transport))
        await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text=self.body)


@pytest.fixture
async def api() -> AsyncIterator[Api]:
    state = Api()
    app = web.Application()
    app.router.add_route("*", "/api/rooms", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    yield state
    await runner.cleanup()


def http_yaml(port: int, extra: str = "") -> str:
    return f"""
probes:
  - name: api
    kind: http
    url: http://127.0.0.1:{port}/api/rooms
    interval: 50ms
    timeout: 1s
    bearer_token: {CANARY}
    expect: {{status: [200], body_contains: rooms}}
{extra}"""


async def test_requests_are_timed_on_one_kept_alive_connection(
    api: Api, start_daemon: StartDaemon
) -> None:
    api.delay = 0.03
    d = await start_daemon(config(http_yaml(api.port)))
    await wait_until(lambda: d.count("probe_http_requests_total", probe="api", result="ok") >= 10)
    count = d.count("probe_http_duration_seconds_count", probe="api")
    mean = d.count("probe_http_duration_seconds_sum", probe="api") / count
    assert 0.03 <= mean < 0.03 + 0.2, mean  # the server's 30 ms plus a loopback base
    # Kept alive: one connection for many requests (a new one only if the pool needed it).
    assert len(api.connections) <= 2
    assert d.value("probe_connect_phase_seconds", probe="api", phase="connect") is not None
    assert d.value("probe_success", probe="api") == 1
    assert set(api.seen_auth) == {f"Bearer {CANARY}"}
    # The SLO threshold (200 ms default) is a bucket boundary.
    assert d.value("probe_http_duration_seconds_bucket", probe="api", le="0.2") is not None


async def test_wrong_status_and_body_are_failures_with_their_result(
    api: Api, start_daemon: StartDaemon
) -> None:
    d = await start_daemon(config(http_yaml(api.port)))
    await wait_until(lambda: d.count("probe_http_requests_total", probe="api", result="ok") >= 1)
    api.status = 503
    await wait_until(
        lambda: d.count("probe_http_requests_total", probe="api", result="status") >= 2
    )
    assert d.value("probe_success", probe="api") == 0
    api.status, api.body = 200, "maintenance"
    await wait_until(lambda: d.count("probe_http_requests_total", probe="api", result="body") >= 2)
    api.body = '{"rooms": 1}'
    await wait_until(lambda: d.value("probe_success", probe="api") == 1)


async def test_a_slow_api_times_out_and_is_never_a_latency(
    api: Api, start_daemon: StartDaemon
) -> None:
    api.delay = 5.0
    text = http_yaml(api.port).replace("timeout: 1s", "timeout: 200ms")
    d = await start_daemon(config(text))
    await wait_until(
        lambda: d.count("probe_http_requests_total", probe="api", result="timeout") >= 3
    )
    assert d.value("probe_success", probe="api") == 0
    assert d.count("probe_http_duration_seconds_count", probe="api") == 0


async def test_connect_errors_have_the_websocket_reasons(start_daemon: StartDaemon) -> None:
    d = await start_daemon(config(http_yaml(9)))  # discard port: refused on loopback
    await wait_until(
        lambda: d.count("probe_connect_errors_total", probe="api", reason="refused") >= 2
    )
    assert d.count("probe_http_requests_total", probe="api", result="error") >= 2


async def test_once_reports_one_request(api: Api) -> None:
    cfg: ProbeConfig = config(http_yaml(api.port)).probes[0]
    metrics = kinds.new_metrics(cfg)
    probe = kinds.build(cfg, metrics, logs.get(probe="api"))
    assert isinstance(probe, HttpProbe)
    assert await probe.once()
    api.status = 500
    assert not await probe.once()
    assert metrics.status.last_error is not None
    assert metrics.status.last_error.reason == "http_500"


def test_http_config_checks() -> None:
    with pytest.raises(Exception, match="a GET request has no body"):
        config(http_yaml(1, "    body: '{}'\n"))
    with pytest.raises(Exception, match="must be a http:// or https:// URL"):
        config(http_yaml(1).replace("http://127", "ws://127"))
    with pytest.raises(Exception, match="set by the HTTP client"):
        config(http_yaml(1, "    headers: {Host: x}\n"))


async def test_golden_exposition_of_the_http_kind(api: Api, start_daemon: StartDaemon) -> None:
    text = "global:\n  labels: {location: test-lab}\n" + http_yaml(api.port)
    d = await start_daemon(config(text))
    await wait_until(lambda: d.count("probe_http_requests_total", probe="api", result="ok") >= 2)
    got = render(parse_exposition(await d.scrape()))
    golden = Path(__file__).parent / "golden" / "http.txt"
    if os.environ.get("PROBED_UPDATE_GOLDEN"):
        golden.write_text(got)
    assert got == golden.read_text(), "the http kind's metric contract changed"


async def _slow_body(request: web.Request) -> web.StreamResponse:
    """The body in two pieces, the expected text only in the second, a pause between."""
    resp = web.StreamResponse()
    await resp.prepare(request)
    await resp.write(b'{"padding": "' + b"x" * 70_000 + b'", ')
    await asyncio.sleep(0.25)
    await resp.write(b'"rooms": 3}')
    await resp.write_eof()
    return resp


async def _gzip_bomb(request: web.Request) -> web.Response:
    """64 MiB of zeros, gzip-compressed to about 64 KiB: decoded, far past the read bound."""
    return web.Response(body=BOMB, headers={"Content-Encoding": "gzip"})


BOMB = gzip.compress(bytes(64 << 20), compresslevel=9)


@pytest.fixture
async def body_server() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/slow", _slow_body)
    app.router.add_get("/bomb", _gzip_bomb)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def test_a_body_in_pieces_is_timed_and_checked_to_its_end(
    body_server: int, start_daemon: StartDaemon
) -> None:
    text = http_yaml(body_server).replace("/api/rooms", "/slow").replace("50ms", "400ms")
    # Each measurement spans a 250 ms pause: on a busy test machine the strict default taint
    # rule would withhold most of them, and this test is about what is timed, not the rule.
    d = await start_daemon(config("global: {loop_lag_threshold: 100ms}\n" + text))
    await wait_until(lambda: d.count("probe_http_requests_total", probe="api", result="ok") >= 2)
    assert d.count("probe_http_requests_total", probe="api", result="body") == 0
    count = d.count("probe_http_duration_seconds_count", probe="api")
    # Timed to the last byte: the server's pause between the pieces is in every measurement.
    assert d.count("probe_http_duration_seconds_sum", probe="api") / count >= 0.25


async def test_a_compression_bomb_is_read_only_to_the_bound(
    body_server: int, start_daemon: StartDaemon
) -> None:
    text = http_yaml(body_server).replace("/api/rooms", "/bomb").replace("50ms", "200ms")
    before = rss_bytes()
    d = await start_daemon(config(text))
    # All zeros: never contains the expected text, but read, decoded and judged, not a crash.
    await wait_until(lambda: d.count("probe_http_requests_total", probe="api", result="body") >= 5)
    assert d.count("probed_probe_restarts_total", probe="api") == 0
    assert rss_bytes() - before < 200 << 20
