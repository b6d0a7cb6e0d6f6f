"""Keeping the HTTP port usable when clients are slow, idle or hostile.

Every connection costs a file descriptor, shared with the probes' sessions. A client that opens
connections and sends nothing (or one header byte a minute) would hold them forever and, at the
descriptor limit, shut out every scrape. The guard wraps each connection's protocol and:

- closes a connection that has not started a request for `idle_timeout` (a slow or never-sent
  request head counts as not started), and aborts one whose request (or the writing of its
  answer) is still going after `request_timeout`;
- caps open connections at `max_connections`: a new connection evicts the oldest one that is not
  in a request, so a scrape that arrives while the port is full still gets through.

Requests are marked started and ended by the application's middleware (`request_started`,
`request_ended`); the guard itself sees only transports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

DEFAULT_MAX_CONNECTIONS: Final = 64


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # Longer than any scrape's pause between connect and request, shorter than an attack needs.
    idle_timeout: float = 20.0
    request_timeout: float = 60.0


@dataclass
class _Conn:
    opened: float
    last_activity: float
    active: int = 0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class ConnectionGuard:
    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        # Insertion order is age order: the first idle entry is the oldest idle connection.
        self._conns: dict[asyncio.BaseTransport, _Conn] = {}
        self.inner: Callable[[], asyncio.BaseProtocol] | None = None
        self.evicted = 0
        self.timed_out = 0

    @property
    def open(self) -> int:
        return len(self._conns)

    def factory(self) -> asyncio.BaseProtocol:
        assert self.inner is not None, "set the inner protocol factory before serving"
        return _Guarded(self, self.inner())

    # -- connections ---------------------------------------------------------------------------

    def opened(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if len(self._conns) >= self.limits.max_connections and not self._evict_one():
            # Every connection is busy with a request: the newcomer waits its turn elsewhere.
            transport.abort()  # type: ignore[attr-defined]
            return
        conn = self._conns[transport] = _Conn(opened=now, last_activity=now)
        self._schedule(transport, conn, now + self.limits.idle_timeout)

    def closed(self, transport: asyncio.BaseTransport) -> None:
        conn = self._conns.pop(transport, None)
        if conn is not None and conn.timer is not None:
            conn.timer.cancel()

    def _evict_one(self) -> bool:
        for transport, conn in self._conns.items():
            if conn.active == 0:
                self.evicted += 1
                self.closed(transport)
                transport.abort()  # type: ignore[attr-defined]
                return True
        return False

    # -- requests (called by the middleware) ---------------------------------------------------

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self._conns.get(transport) if transport is not None else None
        if conn is not None:
            conn.active += 1
            conn.last_activity = asyncio.get_running_loop().time()

    def request_ended(self, transport: asyncio.BaseTransport | None) -> None:
        conn = self._conns.get(transport) if transport is not None else None
        if conn is not None:
            conn.active = max(0, conn.active - 1)
            conn.last_activity = asyncio.get_running_loop().time()

    # -- timeouts ------------------------------------------------------------------------------

    def _schedule(self, transport: asyncio.BaseTransport, conn: _Conn, when: float) -> None:
        loop = asyncio.get_running_loop()
        conn.timer = loop.call_at(when, self._check, transport)

    def _check(self, transport: asyncio.BaseTransport) -> None:
        conn = self._conns.get(transport)
        if conn is None:
            return
        now = asyncio.get_running_loop().time()
        limit = self.limits.request_timeout if conn.active else self.limits.idle_timeout
        due = conn.last_activity + limit
        if now < due:
            self._schedule(transport, conn, due)
            return
        self.timed_out += 1
        self.closed(transport)
        # Between requests a polite close; a request (or its answer) stuck for this long is cut.
        if conn.active:
            transport.abort()  # type: ignore[attr-defined]
        else:
            transport.close()
            # A client that never reads would keep a closing transport (and its descriptor);
            # aborting a transport that is already gone does nothing.
            asyncio.get_running_loop().call_later(1.0, transport.abort)  # type: ignore[attr-defined]


class _Guarded(asyncio.Protocol):
    """Delegates every protocol callback to aiohttp's handler, telling the guard about the
    connection's start and end."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.BaseProtocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)
        self._guard.opened(transport)

    def data_received(self, data: bytes) -> None:
        assert isinstance(self._inner, asyncio.Protocol)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        assert isinstance(self._inner, asyncio.Protocol)
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._guard.closed(self._transport)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
