"""The daemon's HTTP face: /metrics, health and readiness, reload, and a small index page."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from aiohttp import web

from probed import __version__
from probed.config import split_listen
from probed.exposition import chunks

if TYPE_CHECKING:
    from probed.daemon import Daemon

_DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")


async def _metrics(request: web.Request) -> web.StreamResponse:
    daemon = request.app[_DAEMON]
    # Rendered incrementally, on the loop in slices, one render shared by concurrent scrapers,
    # and written in pieces (probed/exposition.py): a scrape must not stall the probes.
    parts, content_type = await daemon.exposition.scrape(request.headers.get("Accept", ""))
    response = web.StreamResponse(headers={"Content-Type": content_type})
    response.content_length = sum(map(len, parts))
    await response.prepare(request)
    for chunk in chunks(parts):
        await response.write(chunk)
    await response.write_eof()
    return response


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


async def _index(request: web.Request) -> web.Response:
    daemon = request.app[_DAEMON]
    rows = "".join(
        f"<li>{html.escape(p.status.name)} ({html.escape(p.status.kind)}): "
        f"{'up' if p.status.up else 'down'}</li>"
        for p in daemon.exposition.probes()
    )
    body = (
        f"<html><head><title>probed</title></head><body><h1>probed {__version__}</h1>"
        '<p><a href="/metrics">/metrics</a> · <a href="/-/healthy">/-/healthy</a> · '
        f'<a href="/-/ready">/-/ready</a></p><ul>{rows}</ul></body></html>'
    )
    return web.Response(text=body, content_type="text/html")


def make_app(daemon: Daemon) -> web.Application:
    app = web.Application()
    app[_DAEMON] = daemon
    app.router.add_get("/", _index)
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
