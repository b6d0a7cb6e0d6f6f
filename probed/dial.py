"""Dialing a WebSocket in measured phases: dns, tcp, tls, upgrade.

Each phase runs under its own deadline and a failure names the phase it happened in, with a
bounded reason for the connect-error counter. The connection that comes out stamps every inbound
message with the moment its bytes arrived.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import os
import socket
import ssl
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Final, Protocol, cast
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidMessage, InvalidStatus
from websockets.frames import CTRL_OPCODES, DATA_OPCODES, Frame
from websockets.protocol import Event
from websockets.typing import Subprotocol

from probed import __version__
from probed.config import ConnectionConfig, TlsConfig
from probed.config.schema.endpoint import proxy_credentials
from probed.config.schema.framing import FramingConfig
from probed.config.schema.scripting import SetupStepConfig
from probed.framing.graphql_ws import GRAPHQL_TRANSPORT_WS
from probed.redact import Redactor

_HTTP = b"HTTP/"
_PROXY_HEAD_LIMIT = 16 * 1024
# Bounds on what one session may hold in memory. websockets applies flow control to the messages
# we send (write_limit) and to inbound messages (max_queue x max_size), but its automatic replies
# (a pong per ping, a close) go to the transport unconditionally: a peer that floods pings and
# never reads would grow our send buffer without bound.
MAX_MESSAGE_BYTES: Final = 1 << 20
MAX_QUEUED_MESSAGES: Final = 16
WRITE_LIMIT: Final = 1 << 15
# Automatic replies allowed to pile up while the send buffer is over WRITE_LIMIT.
MAX_UNREAD_REPLY_BYTES: Final = 256 * 1024
# Control frames per second no legitimate server sends (its keepalive is one every few seconds).
MAX_CONTROL_FRAMES_PER_S: Final = 1000
# Errors that say this process is out of descriptors or memory, not that the target is down.
_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PHASES: Final = ("dns", "tcp", "proxy", "tls", "upgrade")
# Dials in flight at once in one process: a bound for fleets beyond what one process is meant to
# hold, not a rate. On a loop saturated by message traffic a dial takes a fixed number of loop
# iterations, each of which advances every dial in flight, so dials finish in lock step: with 256
# (and later 2,048) slots, 10,000 probes came up one batch at a time, each batch taking 1-3 s
# whatever its size (issue 10: 29 s to all up, against 12 s with every dial in flight at once).
# The wait for a slot is not part of any phase: it is the prober's queue, not the target.
MAX_CONCURRENT_DIALS: Final = 16_384


class DialSlots:
    """A first-come first-served bound on concurrent dials, O(1) per dial however many wait.

    asyncio.Semaphore scans and removes from its whole queue of waiters on every acquire
    (Python 3.11): with ten thousand probes waiting that was quadratic, and the fleet came up
    256 at a time, seconds apart. Here a released slot is handed to the oldest live waiter.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def __aenter__(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        handed = asyncio.get_running_loop().create_future()
        self._waiters.append(handed)
        try:
            await handed
        except asyncio.CancelledError:
            # Cancelled just after being handed a slot: pass it on, or it is lost for good.
            if handed.done() and not handed.cancelled():
                self._release()
            raise

    async def __aexit__(self, *_exc: object) -> None:
        self._release()

    def _release(self) -> None:
        while self._waiters:
            handed = self._waiters.popleft()
            if not handed.done():  # a cancelled waiter is skipped here, not searched for
                handed.set_result(None)
                return
        self._free += 1


_dial_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DialSlots] = (
    weakref.WeakKeyDictionary()
)


def dial_slots() -> DialSlots:
    """This event loop's bound on concurrent dials (its waiters' futures belong to one loop)."""
    loop = asyncio.get_running_loop()
    slots = _dial_slots.get(loop)
    if slots is None:
        slots = _dial_slots[loop] = DialSlots(MAX_CONCURRENT_DIALS)
    return slots


class ConnectError(Exception):
    """A connection attempt that did not produce a usable session."""

    def __init__(
        self, reason: str, phase: str, detail: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{phase}: {detail}")
        self.reason = reason
        self.phase = phase
        self.detail = detail
        self.retry_after = retry_after


class TimedConnection(ClientConnection):
    """Stamps each inbound message when its last bytes arrive, before any task wakes for it.

    Taking the time after recv() returns would add the wait for the reader task to be scheduled,
    which grows with load: exactly the probe's own lateness that must not be measured.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: deque[int] = deque()
        self._chunk_ns = 0
        self._head = b""
        # The peer answered the upgrade with something that is not HTTP.
        self.not_http = False
        # The peer made us queue more than a session may hold (see MAX_UNREAD_REPLY_BYTES).
        self.flooded = False
        self._unread_reply_bytes = 0
        self._control_window_ns = 0
        self._control_frames = 0
        # Called once the transport is up (after TLS), to time the phases; then dropped.
        self.on_made: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        on_made, self.on_made = self.on_made, None
        if on_made is not None:
            on_made()
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._chunk_ns = time.perf_counter_ns()
        if self.flooded:
            return
        if self.response is None and len(self._head) < len(_HTTP):
            # A peer that is not an HTTP server (an SSH banner, a binary protocol) would otherwise
            # leave the handshake waiting for a CRLF that never comes: call it what it is now.
            self._head += data[: len(_HTTP) - len(self._head)]
            if not _HTTP.startswith(self._head):
                self.not_http = True
                self.transport.abort()
                return
        before = self.transport.get_write_buffer_size()
        super().data_received(data)
        # The parser refused the answer's own bytes while the connection was still open (e.g.
        # bare-LF lines, too many or too long headers): a protocol error, not the reset or the
        # timeout it would later look like, so fail the handshake now.
        if isinstance(self.protocol.handshake_exc, InvalidMessage):
            self.not_http = True
            self.transport.abort()
            return
        self._check_unread_replies(before)

    def _check_unread_replies(self, before: int) -> None:
        after = self.transport.get_write_buffer_size()
        if after <= WRITE_LIMIT:
            self._unread_reply_bytes = 0
            return
        # Whatever this chunk made websockets write on its own, while the peer was not reading.
        self._unread_reply_bytes += max(0, after - max(before, WRITE_LIMIT))
        if self._unread_reply_bytes > MAX_UNREAD_REPLY_BYTES:
            self.flood()

    def flood(self) -> None:
        """End the connection now: the peer is making us hold more than a session may."""
        self.flooded = True
        self.transport.abort()

    def check_write_buffer(self, largest: int) -> None:
        """Called before a send: a buffer still holding far more than one message is a peer
        that stopped reading; it is ended rather than fed."""
        if self.transport.get_write_buffer_size() > WRITE_LIMIT + MAX_UNREAD_REPLY_BYTES + largest:
            self.flood()

    def process_event(self, event: Event) -> None:
        # One final data frame per message, in the order recv() hands messages out.
        if isinstance(event, Frame) and event.opcode in DATA_OPCODES and event.fin:
            self.arrivals.append(self._chunk_ns)
        elif isinstance(event, Frame) and event.opcode in CTRL_OPCODES:
            if self._chunk_ns - self._control_window_ns > 1_000_000_000:
                self._control_window_ns, self._control_frames = self._chunk_ns, 0
            self._control_frames += 1
            if self._control_frames > MAX_CONTROL_FRAMES_PER_S:
                self.flood()
        super().process_event(event)


def build_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110 section 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def cert_expiry(conn: ClientConnection) -> float | None:
    """Earliest notAfter in the verified chain (3.13+), else of the leaf."""
    obj = conn.transport.get_extra_info("ssl_object")
    if not isinstance(obj, ssl.SSLObject):
        return None
    infos: list[Mapping[str, Any]] = []
    chain = getattr(obj, "get_verified_chain", None)
    if chain is not None:
        infos = [cert.get_info() for cert in chain()]
    if not infos:
        leaf = obj.getpeercert()
        infos = [leaf] if leaf else []
    expiries = [ssl.cert_time_to_seconds(i["notAfter"]) for i in infos if "notAfter" in i]
    return min(expiries) if expiries else None


def _tcp_reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
        return "unreachable"
    return "unreachable"


def _handshake_reason(exc: Exception) -> tuple[str, float | None]:
    if isinstance(exc, InvalidStatus):
        response = exc.response
        return f"http_{response.status_code}", parse_retry_after(
            response.headers.get("Retry-After")
        )
    if isinstance(exc, ssl.SSLError):
        return "tls", None
    cause = exc.__cause__ if isinstance(exc, InvalidHandshake) else exc
    if isinstance(cause, EOFError | ConnectionError):
        return "reset", None
    if isinstance(exc, InvalidHandshake):
        return "protocol_error", None
    return "reset", None


class _NoRedirects(connect):
    # A probe measures the endpoint it was given; a redirect is reported as http_3xx.
    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class Endpoint(Protocol):
    """What a probe's config says about where and how to connect (read-only)."""

    @property
    def url(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def subprotocols(self) -> Sequence[str]: ...
    @property
    def tls(self) -> TlsConfig: ...
    @property
    def connection(self) -> ConnectionConfig: ...
    @property
    def setup(self) -> Sequence[SetupStepConfig]: ...
    @property
    def framing(self) -> FramingConfig | None: ...
    def request_headers(self) -> dict[str, str]: ...
    def proxy(self) -> str | None: ...


class Dialer:
    """Opens connections to one endpoint; `phases` holds the timings of the latest attempt."""

    def __init__(self, endpoint: Endpoint) -> None:
        parts = urlsplit(endpoint.url)
        self._url = endpoint.url
        self._target = endpoint.target
        self._host = parts.hostname or ""
        self._secure = parts.scheme == "wss"
        self._port = parts.port or (443 if self._secure else 80)
        self._headers = endpoint.request_headers()
        self._subprotocols = [Subprotocol(p) for p in endpoint.subprotocols]
        framing = endpoint.framing
        # The server picks its protocol by subprotocol; offering it is part of the preset.
        graphql = framing is not None and framing.protocol == "graphql_ws"
        if graphql and GRAPHQL_TRANSPORT_WS not in self._subprotocols:
            self._subprotocols.append(Subprotocol(GRAPHQL_TRANSPORT_WS))
        tls = endpoint.tls
        self._server_name = tls.server_name or self._host
        self._ssl = build_ssl_context(tls) if self._secure else None
        self._limit = endpoint.connection.connect_timeout
        self._close_timeout = endpoint.connection.close_timeout
        self._proxy = endpoint.proxy()
        self.redactor = Redactor.for_endpoint(self._headers.values(), self._url, self._proxy)
        self.phases: dict[str, float] = {}

    async def dial(self) -> TimedConnection:
        """dns, tcp, tls and upgrade, each timed; raises ConnectError naming the failed phase."""
        self.phases = {}
        try:
            async with dial_slots():
                return await self._dial()
        except OSError as exc:
            # Out of descriptors (a systemd default of 1,024 goes fast) or buffers: this process
            # cannot connect now. Counted like any failed connect, never a probe crash.
            phase = self._failed_phase()
            if exc.errno in _RESOURCE_ERRNOS:
                raise ConnectError("resources", phase, os.strerror(exc.errno)) from None
            raise ConnectError(
                _tcp_reason(exc), phase, exc.strerror or type(exc).__name__
            ) from None

    async def _dial(self) -> TimedConnection:
        loop = asyncio.get_running_loop()
        limit = self._limit

        # Through a proxy, dns and tcp are to the proxy; the proxy phase is its CONNECT answer.
        proxy = urlsplit(self._proxy) if self._proxy else None
        host = proxy.hostname or "" if proxy else self._host
        port = (proxy.port or 80) if proxy else self._port
        phase, t = "dns", time.perf_counter()
        try:
            async with asyncio.timeout(limit):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise ConnectError("timeout", phase, f"no answer within {limit}s") from None
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_SYSTEM:
                raise ConnectError("resources", phase, exc.strerror or str(exc)) from None
            raise ConnectError("dns", phase, exc.strerror or str(exc)) from None
        except UnicodeError:
            # The name cannot even be encoded for a query (e.g. a label over 63 characters).
            raise ConnectError("dns", phase, "host name is not a valid DNS name") from None
        t = self.mark(phase, t)

        sock = await self._tcp(infos, limit)
        t = self.mark("tcp", t)
        if self._proxy is not None:
            try:
                await self._connect_via_proxy(sock, self._proxy, limit)
            except BaseException:
                sock.close()
                raise
            t = self.mark("proxy", t)
        return await self._upgrade(sock, limit, t)

    async def _connect_via_proxy(self, sock: socket.socket, proxy: str, limit: float) -> None:
        """HTTP CONNECT to the endpoint through a proxy (RFC 9110 section 9.3.6)."""
        loop = asyncio.get_running_loop()
        authority = (
            f"[{self._host}]:{self._port}" if ":" in self._host else (f"{self._host}:{self._port}")
        )
        request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        credentials = proxy_credentials(proxy)
        if credentials is not None:
            token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
            request += f"Proxy-Authorization: Basic {token}\r\n"
        request += "\r\n"
        head = b""
        try:
            async with asyncio.timeout(limit):
                await loop.sock_sendall(sock, request.encode())
                # Byte by byte up to the blank line: whatever follows belongs to the tunnel.
                while not head.endswith(b"\r\n\r\n"):
                    if len(head) > _PROXY_HEAD_LIMIT:
                        raise ConnectError("proxy", "proxy", "CONNECT answer too long")
                    byte = await loop.sock_recv(sock, 1)
                    if not byte:
                        raise ConnectError("proxy", "proxy", "proxy closed the connection")
                    head += byte
        except TimeoutError:
            raise ConnectError("timeout", "proxy", f"no CONNECT answer within {limit}s") from None
        except OSError as exc:
            raise ConnectError("proxy", "proxy", exc.strerror or type(exc).__name__) from None
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ConnectError("proxy", "proxy", "the proxy's answer is not HTTP")
        if parts[1] != "200":
            raise ConnectError(
                "proxy", "proxy", f"proxy refused CONNECT: {self._redact(status_line[:80])}"
            )

    def _failed_phase(self) -> str:
        skipped = {"proxy"} if self._proxy is None else set()
        if not self._secure:
            skipped.add("tls")
        return next((p for p in _PHASES if p not in self.phases and p not in skipped), "upgrade")

    def mark(self, phase: str, since: float) -> float:
        """Record a phase that ran from `since` until now; returns now."""
        now = time.perf_counter()
        self.phases[phase] = now - since
        return now

    async def _tcp(self, infos: list[Any], limit: float) -> socket.socket:
        last: OSError | None = None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit):
                for family, type_, proto, _name, addr in infos:
                    sock = socket.socket(family, type_, proto)
                    sock.setblocking(False)
                    try:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        await loop.sock_connect(sock, addr)
                    except OSError as exc:
                        sock.close()
                        last = exc
                        continue
                    except BaseException:
                        sock.close()
                        raise
                    return sock
        except TimeoutError:
            raise ConnectError("timeout", "tcp", f"no connection within {limit}s") from None
        assert last is not None
        raise ConnectError(_tcp_reason(last), "tcp", last.strerror or type(last).__name__)

    async def _upgrade(self, sock: socket.socket, limit: float, started: float) -> TimedConnection:
        loop = asyncio.get_running_loop()
        tls_done: list[float] = []
        made: list[TimedConnection] = []

        def on_made() -> None:
            # asyncio calls connection_made once the TLS handshake is over: the tls/upgrade split.
            tls_done.append(time.perf_counter())
            # The upgrade gets a deadline of its own, unless the old one is already firing
            # (a loop saturated by a herd of dials runs this late).
            if not deadline.expired():
                deadline.reschedule(loop.time() + limit)

        def timed(protocol: ClientProtocol, **kwargs: Any) -> TimedConnection:
            # A hook on the instance, not a class per dial: a class costs kilobytes and
            # lives as long as the connection.
            conn = TimedConnection(protocol, **kwargs)
            conn.on_made = on_made
            made.append(conn)
            return conn

        try:
            async with asyncio.timeout(limit) as deadline:
                conn = await _NoRedirects(
                    self._url,
                    sock=sock,
                    ssl=self._ssl,
                    server_hostname=self._server_name if self._secure else None,
                    additional_headers=self._headers,
                    subprotocols=self._subprotocols or None,
                    user_agent_header=f"probed/{__version__}",
                    compression=None,
                    max_size=MAX_MESSAGE_BYTES,
                    max_queue=MAX_QUEUED_MESSAGES,
                    write_limit=WRITE_LIMIT,
                    open_timeout=None,
                    ping_interval=None,
                    close_timeout=self._close_timeout,
                    proxy=None,
                    create_connection=cast(type[ClientConnection], timed),
                )
        except TimeoutError:
            sock.close()
            phase = "tls" if self._secure and not tls_done else "upgrade"
            if made and made[0].not_http:
                raise ConnectError("protocol_error", phase, "not a valid HTTP answer") from None
            raise ConnectError("timeout", phase, f"no answer within {limit}s") from None
        except (OSError, InvalidHandshake, EOFError) as exc:
            sock.close()
            phase = "tls" if self._secure and not tls_done else "upgrade"
            reason, retry_after = _handshake_reason(exc)
            if made and made[0].not_http:
                reason, retry_after = "protocol_error", None
            detail = self._redact(str(exc) or type(exc).__name__)
            raise ConnectError(reason, phase, detail, retry_after) from None
        assert isinstance(conn, TimedConnection)
        if self._secure:
            self.phases["tls"] = tls_done[0] - started
            self.mark("upgrade", tls_done[0])
        else:
            self.mark("upgrade", started)
        return conn

    def _redact(self, text: str) -> str:
        # Library errors may quote the URL (a key in its query string) or a header the server
        # sent back, which a hostile server fills with our own Authorization header.
        return self.redactor(text.replace(self._url, self._target))
