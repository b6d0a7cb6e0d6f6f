"""The daemon's HTTP endpoints, on a real daemon bound to port 0."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from probed.targets.echo import EchoTarget
from tests.conftest import RunningDaemon, config, wait_until

StartDaemon = Callable[..., Awaitable[RunningDaemon]]


def yaml_for(url: str, *names: str) -> str:
    return "probes:\n" + "".join(
        f"  - {{name: {n}, kind: echo, url: '{url}', interval: 100ms, timeout: 1s}}\n"
        for n in names
    )


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_health_readiness_index_and_metrics(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    d = await start_daemon(config(yaml_for(echo.url, "alpha", "beta")))
    assert (await get(f"{d.url}/-/healthy"))[0] == 200
    assert (await get(f"{d.url}/-/ready"))[0] == 200
    await wait_until(lambda: all(p.status.up for p in d.daemon.exposition.probes()))
    status, ctype, body = await get(f"{d.url}/")
    assert status == 200 and ctype.startswith("text/html")
    assert 'data-probe="alpha" data-state="ok"' in body
    assert 'data-probe="beta" data-state="ok"' in body
    status, ctype, body = await get(f"{d.url}/metrics")
    assert status == 200 and ctype.startswith("text/plain") and "version=0.0.4" in ctype
    assert 'probe_info{adapter="",kind="echo",probe="alpha"' in body
    assert (await get(f"{d.url}/nope"))[0] == 404


async def test_not_ready_while_stopping(echo: EchoTarget, start_daemon: StartDaemon) -> None:
    d = await start_daemon(config(yaml_for(echo.url, "a")))
    d.daemon.ready.clear()  # what stop() does first; the HTTP server outlives it briefly
    assert (await get(f"{d.url}/-/ready"))[0] == 503


async def test_reload_over_http(
    tmp_path: Path, echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    path = tmp_path / "probed.yaml"
    path.write_text(yaml_for(echo.url, "a"))
    d = await start_daemon(config(path.read_text()), path, enable_lifecycle=True)
    await wait_until(lambda: echo.sessions == 1)
    path.write_text(yaml_for(echo.url, "a", "b"))
    async with aiohttp.ClientSession() as http, http.post(f"{d.url}/-/reload") as resp:
        assert resp.status == 200
        assert "started: 1" in await resp.text()
    await wait_until(lambda: echo.sessions == 2)
    # Removing a probe drops its series and closes its session.
    path.write_text(yaml_for(echo.url, "b"))
    async with aiohttp.ClientSession() as http, http.post(f"{d.url}/-/reload") as resp:
        assert resp.status == 200
    await wait_until(lambda: echo.sessions == 1)
    assert d.value("probe_info", probe="a") is None
    assert d.value("probed_probe_restarts_total", probe="a") is None


async def test_reload_without_a_file_says_so(echo: EchoTarget, start_daemon: StartDaemon) -> None:
    d = await start_daemon(config(yaml_for(echo.url, "a")), enable_lifecycle=True)
    async with aiohttp.ClientSession() as http, http.post(f"{d.url}/-/reload") as resp:
        assert resp.status == 500
        assert "no config file" in await resp.text()


async def test_reload_applies_global_labels_and_level_without_touching_sessions(
    tmp_path: Path, echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    path = tmp_path / "probed.yaml"
    body = yaml_for(echo.url, "a")
    path.write_text("global: {labels: {location: lab-1}}\n" + body)
    d = await start_daemon(config(path.read_text()), path)
    await wait_until(lambda: echo.sessions == 1)
    assert d.value("probe_info", probe="a", location="lab-1") == 1
    upgrades = echo.upgrades
    path.write_text("global: {labels: {location: lab-2}, loop_lag_threshold: 80ms}\n" + body)
    ok, message = await d.daemon.reload()
    assert ok, message
    assert d.value("probe_info", probe="a", location="lab-2") == 1
    assert d.value("probe_info", probe="a", location="lab-1") is None
    assert d.daemon.lag.threshold == 0.08
    assert echo.upgrades == upgrades  # the probe's session was not touched
