"""Fault-injecting TCP proxy: put it between a probe and a target, then break the network.

Each accepted connection gets its own upstream connection and, per direction, a reader that
stamps every chunk with its due time and a writer that releases chunks in order once they are
due, respecting blackhole, throttle and byte budget. A bounded queue between the two carries
backpressure from a slow receiver back to the sender.

Blackhole stops both reading and writing instead of reading and discarding: like a partitioned
network, the sender's buffers fill up and nothing that was sent is lost, so when the blackhole
lifts the byte stream resumes intact. Discarding would splice the stream mid-frame, which no
real network can do to TCP. While blackholed, new connections are accepted but their upstream
connection is not attempted either.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import socket
import struct
from typing import TypeAlias

from aiohttp import web

from probed.targets.control import (
    HttpServer,
    Service,
    bad_request,
    get_bool,
    get_int,
    get_number,
    json_object,
    run_forever,
    url_host,
)

_CHUNK = 64 * 1024
_QUEUE_CHUNKS = 16  # per direction, so at most ~1 MiB buffered in front of a slow receiver
_CONNECT_TIMEOUT = 10.0
_THROTTLE_SLICE = 0.05  # throttled data leaves in slices of this many seconds' worth
_Queue: TypeAlias = asyncio.Queue[tuple[float, bytes]]  # (due time, chunk); b"" is EOF


class _BudgetSpent(Exception):
    """close_after's byte budget is used up: the link ends with FIN on both sides."""


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    # A zero linger makes close() send RST instead of FIN, which is what a reset looks like.
    if writer.transport.is_closing():
        return  # already gone: uvloop's socket wrapper then has no descriptor to set
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # ValueError: uvloop's wrapper of a socket closed meanwhile ("negative file descriptor").
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One client connection and its upstream twin."""

    def __init__(self, proxy: FaultProxy, client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.forwarded = 0
        self._proxy = proxy
        self._client = client
        self._upstream: asyncio.StreamWriter | None = None
        self._graceful = False

    def abort(self) -> None:
        self._graceful = False
        for writer in (self._client, self._upstream):
            if writer is not None:
                _abort_with_rst(writer)
        self.task.cancel()

    def finish(self) -> None:
        self._graceful = True
        self.task.cancel()

    def budget_spent(self) -> bool:
        limit = self._proxy.close_after_bytes
        return limit is not None and self.forwarded >= limit

    async def run(self, client_reader: asyncio.StreamReader) -> None:
        proxy = self._proxy
        try:
            await proxy.flowing.wait()
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                upstream_reader, self._upstream = await asyncio.open_connection(*proxy.upstream)
            if not self.budget_spent():  # close_after(0) closes before a byte is carried
                to_upstream: _Queue = asyncio.Queue(_QUEUE_CHUNKS)
                to_client: _Queue = asyncio.Queue(_QUEUE_CHUNKS)
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._read(client_reader, to_upstream))
                    tg.create_task(self._write(to_upstream, self._upstream))
                    tg.create_task(self._read(upstream_reader, to_client))
                    tg.create_task(self._write(to_client, self._client))
            self._graceful = True
        except* _BudgetSpent:
            self._graceful = True
        except* OSError:
            pass  # a failure on one side (connect refused, reset) reaches the other as a reset
        finally:
            for writer in (self._client, self._upstream):
                if writer is None:
                    continue
                if self._graceful:
                    writer.close()
                else:
                    _abort_with_rst(writer)

    async def _read(self, reader: asyncio.StreamReader, queue: _Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._proxy.flowing.wait()
            data = await reader.read(_CHUNK)
            # The due time is fixed on arrival and the queue is FIFO: latency never reorders.
            await queue.put((loop.time() + self._proxy.latency, data))
            if not data:
                return

    async def _write(self, queue: _Queue, writer: asyncio.StreamWriter) -> None:
        proxy = self._proxy
        loop = asyncio.get_running_loop()
        free_at = 0.0  # throttle: when this direction may send again
        while True:
            due, data = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            view = memoryview(data)
            while True:
                # Re-checked per slice so that a blackhole also stops a chunk already in flight.
                await proxy.flowing.wait()
                if not view:
                    break
                rate = proxy.bytes_per_second
                size = len(view) if rate is None else max(1, int(rate * _THROTTLE_SLICE))
                if proxy.close_after_bytes is not None:
                    size = min(size, proxy.close_after_bytes - self.forwarded)
                if size <= 0:
                    raise _BudgetSpent
                piece, view = view[:size], view[size:]
                if rate is not None:
                    now = loop.time()
                    free_at = max(free_at, now)
                    if free_at > now:
                        await asyncio.sleep(free_at - now)
                    free_at += len(piece) / rate
                writer.write(piece)
                self.forwarded += len(piece)
                await writer.drain()
                if self.budget_spent():
                    raise _BudgetSpent
            if not data:
                # Half-close: the other direction keeps flowing until it ends too.
                if writer.can_write_eof():
                    writer.write_eof()
                return


class FaultProxy(Service):
    """TCP proxy to one upstream; faults apply at once to open and new connections alike.

    ``throttle`` caps each direction of each connection separately; ``close_after`` counts
    both directions of a connection together. ``stop`` resets whatever is still connected: a
    test tearing down should not wait on its peers.
    """

    def __init__(
        self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._host = host
        self._port = port
        self.connections_total = 0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.latency = 0.0
        self.bytes_per_second: float | None = None
        self.close_after_bytes: int | None = None
        self._refusing = False
        self._running = False
        self._sock: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._starting: set[asyncio.Task[None]] = set()
        self._links: set[_Link] = set()

    async def start(self) -> None:
        if self._running:
            raise RuntimeError("proxy already started")
        self._running = True
        if not self._refusing:
            self._listen()
        await asyncio.gather(*self._starting)

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._unlisten()
        await asyncio.gather(*self._starting, return_exceptions=True)
        links = list(self._links)
        for link in links:
            link.abort()
        await asyncio.gather(*(link.task for link in links), return_exceptions=True)

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("proxy not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self._host, self.port)

    @property
    def active(self) -> int:
        return len(self._links)

    def reset(self) -> None:
        for link in list(self._links):
            link.abort()

    def blackhole(self, on: bool = True) -> None:
        if on:
            self.flowing.clear()
        else:
            self.flowing.set()

    def set_latency(self, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("latency must be a finite number of seconds >= 0")
        self.latency = seconds

    def throttle(self, bytes_per_second: float | None) -> None:
        if bytes_per_second is not None and not (
            math.isfinite(bytes_per_second) and bytes_per_second > 0
        ):
            raise ValueError("throttle must be a finite number of bytes per second > 0, or None")
        self.bytes_per_second = bytes_per_second

    def close_after(self, n_bytes: int | None) -> None:
        if n_bytes is not None and n_bytes < 0:
            raise ValueError("close_after must be a byte count >= 0, or None")
        self.close_after_bytes = n_bytes
        # Connections already past the new budget would otherwise wait for their next byte.
        for link in list(self._links):
            if link.budget_spent():
                link.finish()

    def refuse(self, on: bool = True) -> None:
        self._refusing = on
        if not self._running:
            return
        if on:
            self._unlisten()
        else:
            self._listen()

    def heal(self) -> None:
        self.set_latency(0.0)
        self.throttle(None)
        self.close_after(None)
        self.blackhole(False)
        self.refuse(False)

    def status(self) -> dict[str, object]:
        return {
            "connections_total": self.connections_total,
            "active": self.active,
            "faults": {
                "blackhole": not self.flowing.is_set(),
                "latency": self.latency,
                "bytes_per_second": self.bytes_per_second,
                "close_after": self.close_after_bytes,
                "refuse": self._refusing,
            },
        }

    def _listen(self) -> None:
        # Bound and listening before this returns, so a connect right after heal() succeeds
        # (it waits in the backlog until the accept loop below is up).
        if self._sock is not None:
            return
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.create_server((self._host, self._port), family=family)
        sock.setblocking(False)
        # Pinned, so that refuse() then heal() comes back on the same port.
        self._port = sock.getsockname()[1]
        self._sock = sock
        task = asyncio.get_running_loop().create_task(self._serve(sock))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            server = await asyncio.start_server(self._accept, sock=sock, limit=_CHUNK)
        except OSError:
            if self._sock is sock:
                raise
            return  # refused again before the accept loop started; _unlisten closed sock
        if self._sock is sock:
            self._server = server
        else:
            server.close()

    def _unlisten(self) -> None:
        # Closing the listening socket is what turns new connects into ECONNREFUSED.
        sock, self._sock = self._sock, None
        if self._server is not None:
            self._server.close()
            self._server = None
        elif sock is not None:
            sock.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._running:
            _abort_with_rst(writer)
            return
        self.connections_total += 1
        link = _Link(self, writer)
        self._links.add(link)
        try:
            await link.run(reader)
        except asyncio.CancelledError:
            # Only abort(), finish() and stop() cancel a link, and they have closed it by now;
            # asyncio.streams would log a handler task that ends cancelled as an error.
            pass
        finally:
            self._links.discard(link)


def control_app(proxy: FaultProxy) -> web.Application:
    """The HTTP control surface, for game days driven by curl."""

    def status() -> web.Response:
        return web.json_response(proxy.status())

    async def reset(request: web.Request) -> web.Response:
        await json_object(request, ())
        proxy.reset()
        return status()

    async def blackhole(request: web.Request) -> web.Response:
        body = await json_object(request, ("on",))
        proxy.blackhole(get_bool(body, "on") if "on" in body else True)
        return status()

    async def latency(request: web.Request) -> web.Response:
        body = await json_object(request, ("seconds",))
        if "seconds" not in body:
            bad_request("missing 'seconds'")
        seconds = get_number(body, "seconds", nullable=False)
        assert seconds is not None
        proxy.set_latency(seconds)
        return status()

    async def throttle(request: web.Request) -> web.Response:
        body = await json_object(request, ("bytes_per_second",))
        if "bytes_per_second" not in body:
            bad_request("missing 'bytes_per_second' (null for unlimited)")
        rate = get_number(body, "bytes_per_second")
        if rate == 0:
            bad_request("'bytes_per_second' must be > 0, or null for unlimited")
        proxy.throttle(rate)
        return status()

    async def close_after(request: web.Request) -> web.Response:
        body = await json_object(request, ("bytes",))
        if "bytes" not in body:
            bad_request("missing 'bytes' (null to turn off)")
        n_bytes = get_int(body, "bytes")
        if n_bytes is not None and n_bytes < 0:
            bad_request("'bytes' must be >= 0, or null to turn off")
        proxy.close_after(n_bytes)
        return status()

    async def refuse(request: web.Request) -> web.Response:
        body = await json_object(request, ("on",))
        proxy.refuse(get_bool(body, "on") if "on" in body else True)
        return status()

    async def heal(request: web.Request) -> web.Response:
        await json_object(request, ())
        proxy.heal()
        return status()

    async def get_status(request: web.Request) -> web.Response:
        return status()

    app = web.Application()
    app.router.add_post("/reset", reset)
    app.router.add_post("/blackhole", blackhole)
    app.router.add_post("/latency", latency)
    app.router.add_post("/throttle", throttle)
    app.router.add_post("/close-after", close_after)
    app.router.add_post("/refuse", refuse)
    app.router.add_post("/heal", heal)
    app.router.add_get("/status", get_status)
    return app


def host_port(text: str) -> tuple[str, int]:
    """Parse HOST:PORT; an IPv6 host goes in brackets, as in a URL: [::1]:8080."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        type=host_port,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="where probes connect (default 127.0.0.1:0, a free port)",
    )
    parser.add_argument(
        "--upstream",
        type=host_port,
        required=True,
        metavar="HOST:PORT",
        help="the real target",
    )
    parser.add_argument(
        "--control",
        type=host_port,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="HTTP control endpoint (default 127.0.0.1:0, a free port)",
    )


async def serve(args: argparse.Namespace) -> None:
    upstream_host, upstream_port = args.upstream
    listen_host, listen_port = args.listen
    control_host, control_port = args.control
    async with FaultProxy(upstream_host, upstream_port, listen_host, listen_port) as proxy:
        control = HttpServer(control_app(proxy), control_host, control_port)
        await control.start()
        try:
            print(
                f"fault proxy listening on {url_host(listen_host)}:{proxy.port}"
                f" -> {url_host(upstream_host)}:{upstream_port}"
                f" (control: http://{url_host(control_host)}:{control.port}/)",
                flush=True,
            )
            await run_forever()
        finally:
            await control.stop()
