"""Plumbing shared by the targets' HTTP control endpoints and CLI entry points."""

from __future__ import annotations

import asyncio
import json
import math
import ssl
from collections.abc import Collection, Mapping
from typing import NoReturn, Self

from aiohttp import web


def bad_request(message: str) -> NoReturn:
    raise web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


async def json_object(request: web.Request, allowed: Collection[str]) -> dict[str, object]:
    """The request body as a JSON object; an empty body counts as ``{}``.

    Unknown keys are rejected rather than ignored: a typo in a game-day curl must not look
    like a fault that was applied.
    """
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        bad_request(f"body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        bad_request("body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        bad_request(f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return body


def get_bool(body: Mapping[str, object], key: str) -> bool:
    value = body[key]
    if not isinstance(value, bool):
        bad_request(f"{key!r} must be true or false")
    return value


def _or_null(nullable: bool) -> str:
    return " or null" if nullable else ""


def get_int(body: Mapping[str, object], key: str, *, nullable: bool = True) -> int | None:
    value = body[key]
    if value is None and nullable:
        return None
    # bool is an int subclass; `true` as a status code is a mistake, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        bad_request(f"{key!r} must be an integer{_or_null(nullable)}")
    return value


def get_number(body: Mapping[str, object], key: str, *, nullable: bool = True) -> float | None:
    value = body[key]
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        bad_request(f"{key!r} must be a number{_or_null(nullable)}")
    if not math.isfinite(value) or value < 0:
        bad_request(f"{key!r} must be a finite number >= 0")
    return float(value)


class Service:
    """Something started and stopped around a block: `async with EchoTarget() as echo:`."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *_exc_info: object) -> None:
        await self.stop()


class HttpService(Service):
    """A Service served by an HttpServer: its port and the addresses of its endpoints."""

    _http: HttpServer
    _host: str
    _tls = False

    @property
    def port(self) -> int:
        return self._http.port

    def address(self, path: str, *, websocket: bool = False) -> str:
        scheme = "https" if self._tls else "http"
        if websocket:
            scheme = "wss" if self._tls else "ws"
        return f"{scheme}://{url_host(self._host)}:{self.port}{path}"

    @property
    def control_url(self) -> str:
        """The fault-control endpoints (/-/fault, /-/heal, /-/status)."""
        return self.address("/-/")


class HttpServer:
    """An aiohttp application on one TCP port, bound on start, with the real port exposed."""

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._host = host
        self._requested_port = port
        self._ssl_context = ssl_context
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self._host, self._requested_port, ssl_context=self._ssl_context
        )
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self._runner.cleanup()


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def run_forever() -> None:
    """Park the caller until it is cancelled (the CLI's Ctrl-C or the daemon's shutdown)."""
    await asyncio.Event().wait()
