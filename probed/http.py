"""The daemon's HTTP face: /metrics, health and readiness, reload, the status page and API."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from probed.config import split_listen
from probed.statuspage import add_routes

if TYPE_CHECKING:
    from probed.daemon import Daemon

_DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")


async def _metrics(request: web.Request) -> web.Response:
    daemon = request.app[_DAEMON]
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    # Rendering thousands of series is CPU work: off the loop, so it cannot taint measurements.
    body = await asyncio.to_thread(encoder, daemon.exposition)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _healthy(_request: web.Request) -> web.Response:
    return web.Response(text="probed is healthy\n")


async def _ready(request: web.Request) -> web.Response:
    if request.app[_DAEMON].ready.is_set():
        return web.Response(text="probed is ready\n")
    return web.Response(status=503, text="probed is not ready\n")


async def _reload(request: web.Request) -> web.Response:
    ok, message = request.app[_DAEMON].reload()
    if ok:
        return web.Response(text=f"config reloaded ({message})\n")
    return web.Response(status=500, text=f"config reload failed; running config kept:\n{message}\n")


def make_app(daemon: Daemon) -> web.Application:
    app = web.Application()
    app[_DAEMON] = daemon
    add_routes(app, daemon)  # the status page at / and the JSON API under /api/v1/
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/-/healthy", _healthy)
    app.router.add_get("/-/ready", _ready)
    app.router.add_post("/-/reload", _reload)
    app.router.add_put("/-/reload", _reload)
    return app


async def start_http(daemon: Daemon, listen: str) -> tuple[web.AppRunner, tuple[str, int]]:
    host, port = split_listen(listen)
    runner = web.AppRunner(make_app(daemon), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host or None, port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound = runner.addresses[0]
    return runner, (str(bound[0]), int(bound[1]))
