"""The daemon's HTTP face: /metrics, health and readiness, reload, the status page and API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from aiohttp import web

from probed import lifecycle
from probed.config import split_listen
from probed.exposition import chunks
from probed.httpguard import ConnectionGuard, HttpLimits
from probed.webconfig import BasicAuth

if TYPE_CHECKING:
    from probed.daemon import Daemon

_DAEMON: web.AppKey[Daemon] = web.AppKey("daemon")
_GUARD: web.AppKey[ConnectionGuard] = web.AppKey("guard")
_ALLOWED_HOSTS: web.AppKey[frozenset[str]] = web.AppKey("allowed_hosts")


# The scraper's own timeout, which Prometheus sends with every scrape: a render that gathers from
# worker processes (probed/workers/) answers within it, without the workers that are too slow.
scrape_timeout: ContextVar[float | None] = ContextVar("scrape_timeout", default=None)


def _timeout_header(value: str | None) -> float | None:
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 < seconds < 3600 else None


async def _metrics(request: web.Request) -> web.StreamResponse:
    daemon = request.app[_DAEMON]
    scrape_timeout.set(_timeout_header(request.headers.get("X-Prometheus-Scrape-Timeout-Seconds")))
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


async def _healthy(request: web.Request) -> web.Response:
    ok, text = request.app[_DAEMON].health()
    return web.Response(status=200 if ok else 503, text=text)


async def _ready(request: web.Request) -> web.Response:
    if request.app[_DAEMON].ready.is_set():
        return web.Response(text="probed is ready\n")
    return web.Response(status=503, text="probed is not ready\n")


async def _reload(request: web.Request) -> web.Response:
    daemon = request.app[_DAEMON]
    if not daemon.enable_lifecycle:
        return web.Response(
            status=403,
            text="the lifecycle API is off: start probed with --web.enable-lifecycle, "
            "or send SIGHUP to reload\n",
        )
    refusal = lifecycle.refusal(request.headers, request.app[_ALLOWED_HOSTS])
    if refusal is not None:
        return web.Response(status=403, text=f"reload refused: {refusal}\n")
    ok, message = await daemon.reload()
    if ok:
        return web.Response(text=f"config reloaded ({message})\n")
    return web.Response(status=500, text=f"config reload failed; running config kept:\n{message}\n")


@web.middleware
async def _track_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    # The connection guard times out connections that are not in a request; this says when
    # one is.
    guard = request.app[_GUARD]
    guard.request_started(request.transport)
    try:
        return await handler(request)
    finally:
        guard.request_ended(request.transport)


def make_app(daemon: Daemon, guard: ConnectionGuard | None = None) -> web.Application:
    middlewares: list[Any] = [_track_requests]
    web_config = daemon.web_config
    if web_config is not None and web_config.basic_auth_users:
        middlewares.append(BasicAuth(web_config.basic_auth_users).middleware)
    # Nothing probed serves takes a body beyond a few bytes; a large one is refused unread.
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    app[_DAEMON] = daemon
    app[_GUARD] = guard or ConnectionGuard(HttpLimits())
    app[_ALLOWED_HOSTS] = lifecycle.allowed_hosts(daemon.listen)
    daemon.add_status_routes(app)  # the status page at / and the JSON API under /api/v1/
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/-/healthy", _healthy)
    app.router.add_get("/-/ready", _ready)
    app.router.add_post("/-/reload", _reload)
    app.router.add_put("/-/reload", _reload)
    return app


class HttpServer:
    """The listening socket and the aiohttp runner behind it."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server, guard: ConnectionGuard):
        self.runner = runner
        self.server = server
        self.guard = guard

    async def cleanup(self) -> None:
        self.server.close()
        await self.runner.cleanup()


async def start_http(
    daemon: Daemon, listen: str, limits: HttpLimits | None = None
) -> tuple[HttpServer, tuple[str, int]]:
    host, port = split_listen(listen)
    guard = ConnectionGuard(limits or HttpLimits())
    runner = web.AppRunner(
        make_app(daemon, guard),
        access_log=None,
        handle_signals=False,
        # aiohttp's own idle limit, kept in step with the guard's.
        keepalive_timeout=guard.limits.idle_timeout,
    )
    await runner.setup()
    assert runner.server is not None
    guard.inner = runner.server
    loop = asyncio.get_running_loop()
    try:
        tls = daemon.web_config.tls_server_config if daemon.web_config is not None else None
        server = await loop.create_server(
            guard.factory,
            host or None,
            port,
            reuse_address=True,
            ssl=tls.ssl_context() if tls is not None else None,
        )
    except OSError:
        await runner.cleanup()
        raise
    bound = server.sockets[0].getsockname()
    return HttpServer(runner, server, guard), (str(bound[0]), int(bound[1]))
