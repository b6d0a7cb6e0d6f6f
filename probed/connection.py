"""The WebSocket session supervisor every WebSocket-based probe runs on.

It dials in measured phases (dns, tcp, tls, upgrade, then the probe's own setup), each under its
own deadline; holds the session with a keepalive; classifies how each session ends; and reconnects
with capped, jittered exponential backoff, timing the reconnect from the moment the loss was
detected. Probes supply a `SessionHandler`: what to do once connected, nothing about connecting.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
)
from websockets.frames import DATA_OPCODES, CloseCode, Frame
from websockets.protocol import Event
from websockets.typing import Subprotocol

from probed import __version__
from probed.config import ConnectionConfig, ReconnectConfig, TlsConfig
from probed.metrics import ProbeMetrics

# A hostile Retry-After must not park a probe for days, nor a zero one make it spin.
MAX_RETRY_AFTER = 3600.0
# Close codes a client sends when the *server* broke the protocol (RFC 6455 section 7.4.1).
_PROTOCOL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1009})
_HTTP = b"HTTP/"
_SHUTDOWN_CLOSE_TIMEOUT = 3.0
# What websockets (and every browser) reports when a connection ended without a close frame.
_NO_CLOSE_FRAME = 1006


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


class SessionEnded(Exception):
    """Raised by a handler to end the session with a bounded reason."""

    reason = "protocol_error"
    close_code = CloseCode.POLICY_VIOLATION


class GoAway(SessionEnded):
    """The provider announced that it is about to end the session."""

    reason = "go_away"
    close_code = CloseCode.NORMAL_CLOSURE


class AppTimeout(SessionEnded):
    """The application stopped answering although the transport looks alive."""

    reason = "timeout"
    close_code = CloseCode.NORMAL_CLOSURE


class _Stalled(Exception):
    pass


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

    def data_received(self, data: bytes) -> None:
        self._chunk_ns = time.perf_counter_ns()
        if self.response is None and len(self._head) < len(_HTTP):
            # A peer that is not an HTTP server (an SSH banner, a binary protocol) would otherwise
            # leave the handshake waiting for a CRLF that never comes: call it what it is now.
            self._head += data[: len(_HTTP) - len(self._head)]
            if not _HTTP.startswith(self._head):
                self.not_http = True
                self.transport.abort()
                return
        super().data_received(data)
        # The parser refused the answer's own bytes while the connection was still open (e.g.
        # bare-LF lines): a protocol error, not the reset it would later look like.
        if isinstance(self.protocol.handshake_exc, InvalidMessage):
            self.not_http = True

    def process_event(self, event: Event) -> None:
        # One final data frame per message, in the order recv() hands messages out.
        if isinstance(event, Frame) and event.opcode in DATA_OPCODES and event.fin:
            self.arrivals.append(self._chunk_ns)
        super().process_event(event)


@dataclass
class Session:
    """One usable connection: an epoch. Sequence numbers and in-flight state belong to it."""

    ws: TimedConnection
    epoch: int
    started_ns: int
    resume_handle: str | None
    last_inbound_ns: int = field(default_factory=time.perf_counter_ns)
    draining: bool = False

    async def recv(self) -> tuple[str | bytes, int]:
        """The next inbound message and the instant its bytes arrived, before any parsing."""
        data = await self.ws.recv()
        arrived = self.ws.arrivals.popleft() if self.ws.arrivals else time.perf_counter_ns()
        self.last_inbound_ns = arrived
        return data, arrived

    async def send(self, data: str | bytes) -> None:
        await self.ws.send(data)


class SessionHandler(Protocol):
    """What a probe does with a session. The supervisor owns connecting and disconnecting."""

    async def setup(self, session: Session) -> None:
        """Application setup after the upgrade (auth, provider setup); part of connecting."""

    async def serve(self, session: Session) -> None:
        """Run while the session is up. Raise SessionEnded (or let ConnectionClosed out) to end."""

    async def drain(self, session: Session) -> None:
        """Before an intentional close: stop sending and let in-flight work finish."""

    def ended(self, session: Session, reason: str) -> None:
        """The session is gone; settle its in-flight state."""


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter above a floor of `initial`.

    Attempt 0 (the first connect, or the first reconnect after a session stayed healthy for
    `reset_after`) goes at once; every later attempt waits at least `initial`, so whatever the
    server does the probe never spins.
    """

    policy: ReconnectConfig

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        base = 0.0
        if attempt > 0:
            cap = min(self.policy.max, self.policy.initial * 2 ** min(attempt - 1, 32))
            base = random.uniform(self.policy.initial, max(self.policy.initial, cap))
        if retry_after is not None:
            base = max(base, min(retry_after, MAX_RETRY_AFTER))
        return base


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


def classify_closed(exc: ConnectionClosed) -> tuple[str, int]:
    """How a session that the probe did not close on purpose ended: (reason, close code)."""
    rcvd, sent = exc.rcvd, exc.sent
    if sent is not None and sent.code in _PROTOCOL_CLOSE_CODES and not exc.rcvd_then_sent:
        return "protocol_error", rcvd.code if rcvd is not None else _NO_CLOSE_FRAME
    if rcvd is not None:
        return "server_close", rcvd.code
    return "reset", _NO_CLOSE_FRAME


def _cert_expiry(conn: ClientConnection) -> float | None:
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


class Supervisor:
    """Keeps one session to `url` alive for a handler, for as long as it runs."""

    def __init__(
        self,
        *,
        url: str,
        target: str,
        headers: Mapping[str, str],
        subprotocols: Sequence[str],
        tls: TlsConfig,
        connection: ConnectionConfig,
        metrics: ProbeMetrics,
        handler: SessionHandler,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        parts = urlsplit(url)
        self._url = url
        self._target = target
        self._host = parts.hostname or ""
        self._secure = parts.scheme == "wss"
        self._port = parts.port or (443 if self._secure else 80)
        self._headers = dict(headers)
        self._subprotocols = [Subprotocol(p) for p in subprotocols]
        self._server_name = tls.server_name or self._host
        self._ssl = build_ssl_context(tls) if self._secure else None
        self._cfg = connection
        self._backoff = Backoff(connection.reconnect)
        self._metrics = metrics
        self._handler = handler
        self._log = log
        self._epoch = 0
        self._phases: dict[str, float] = {}
        # Carried from one session into the next setup, for providers that can resume.
        self.resume_handle: str | None = None
        self.session: Session | None = None

    @property
    def phases(self) -> dict[str, float]:
        """Durations of the latest connect's phases, in seconds."""
        return dict(self._phases)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        attempt = 0
        loss_ns: int | None = None
        while True:
            try:
                session = await self.connect()
            except ConnectError as exc:
                attempt += 1
                delay = self._backoff.delay(attempt, exc.retry_after)
                self._metrics.connect_failed(exc.reason)
                self._log.warning(
                    "connect failed",
                    reason=exc.reason,
                    phase=exc.phase,
                    detail=exc.detail,
                    retry_in_s=round(delay, 3),
                    attempt=attempt,
                )
                await asyncio.sleep(delay)
                continue

            reconnect_s = None if loss_ns is None else (session.started_ns - loss_ns) / 1e9
            self._metrics.connected_ok(
                phases=self._phases,
                total=sum(self._phases.values()),
                reconnect=reconnect_s,
                cert_expiry=_cert_expiry(session.ws),
            )
            self._log.info(
                "session up",
                epoch=session.epoch,
                **{f"{k}_ms": round(v * 1e3, 2) for k, v in self._phases.items()},
                reconnect_s=None if reconnect_s is None else round(reconnect_s, 3),
            )
            reason, code = await self.hold(session)
            loss_ns = time.perf_counter_ns()
            lived = (loss_ns - session.started_ns) / 1e9
            if lived >= self._cfg.reconnect.reset_after or reason == "churn":
                attempt = 0
            else:
                attempt += 1
            delay = 0.0 if reason == "churn" else self._backoff.delay(attempt)
            self._log.info(
                "session down",
                epoch=session.epoch,
                reason=reason,
                close_code=code,
                close_reason=session.ws.close_reason or None,
                lived_s=round(lived, 3),
                reconnect_in_s=round(delay, 3),
            )
            if delay:
                await asyncio.sleep(delay)

    # -- connecting ----------------------------------------------------------------------------

    async def connect(self) -> Session:
        """One phased dial, timed; raises ConnectError naming the phase that failed."""
        self._phases = {}
        loop = asyncio.get_running_loop()
        limit = self._cfg.connect_timeout

        phase, t = "dns", time.perf_counter()
        try:
            async with asyncio.timeout(limit):
                infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise ConnectError("timeout", phase, f"no answer within {limit}s") from None
        except socket.gaierror as exc:
            raise ConnectError("dns", phase, exc.strerror or str(exc)) from None
        except UnicodeError:
            # The name cannot even be encoded for a query (e.g. a label over 63 characters).
            raise ConnectError("dns", phase, "host name is not a valid DNS name") from None
        t = self._mark(phase, t)

        phase = "tcp"
        sock = await self._dial(infos, limit)
        t = self._mark(phase, t)

        conn = await self._upgrade(sock, limit, t)
        self._epoch += 1
        session = Session(
            ws=conn,
            epoch=self._epoch,
            started_ns=0,
            resume_handle=self.resume_handle,
        )
        t = time.perf_counter()
        try:
            async with asyncio.timeout(limit):
                await self._handler.setup(session)
        except TimeoutError:
            conn.transport.abort()
            raise ConnectError("timeout", "setup", f"not ready within {limit}s") from None
        except (SessionEnded, ConnectionClosed) as exc:
            conn.transport.abort()
            raise ConnectError("setup", "setup", type(exc).__name__) from None
        self._mark("setup", t)
        session.started_ns = session.last_inbound_ns = time.perf_counter_ns()
        return session

    def _mark(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self._phases[phase] = now - since
        return now

    async def _dial(self, infos: list[Any], limit: float) -> socket.socket:
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

        class _Timed(TimedConnection):
            # asyncio calls connection_made once the TLS handshake is over: the tls/upgrade split.
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                tls_done.append(time.perf_counter())
                made.append(self)
                deadline.reschedule(loop.time() + limit)
                super().connection_made(transport)

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
                    open_timeout=None,
                    ping_interval=None,
                    close_timeout=self._cfg.close_timeout,
                    proxy=None,
                    create_connection=_Timed,
                )
        except TimeoutError:
            sock.close()
            phase = "tls" if self._secure and not tls_done else "upgrade"
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
            self._phases["tls"] = tls_done[0] - started
            self._mark("upgrade", tls_done[0])
        else:
            self._mark("upgrade", started)
        return conn

    # -- holding -------------------------------------------------------------------------------

    async def hold(self, session: Session) -> tuple[str, int | None]:
        """Run the handler on a session until it ends; returns (reason, close code received)."""
        self.session = session
        tasks: dict[asyncio.Task[None], str] = {
            asyncio.create_task(self._handler.serve(session)): "serve",
        }
        keepalive = self._cfg.keepalive
        if keepalive.mode == "ping":
            tasks[asyncio.create_task(self._ping(session))] = "keepalive"
        elif keepalive.mode == "message":
            tasks[asyncio.create_task(self._keepalive_message(session))] = "keepalive"
        if self._cfg.churn is not None:
            tasks[asyncio.create_task(asyncio.sleep(self._cfg.churn))] = "churn"
        reason, code = "shutdown", None
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            reason, code = await self._conclude(session, done, tasks)
        except asyncio.CancelledError:
            # The daemon promises to exit within 5 s of SIGTERM, whatever close_timeout says.
            await self._close(
                session, CloseCode.GOING_AWAY, "probe shutting down", _SHUTDOWN_CLOSE_TIMEOUT
            )
            raise
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            session.ws.transport.abort()
            self.session = None
            self._handler.ended(session, reason)
            self._metrics.disconnected(reason, code)
        return reason, code

    async def _conclude(
        self,
        session: Session,
        done: set[asyncio.Task[None]],
        tasks: Mapping[asyncio.Task[None], str],
    ) -> tuple[str, int | None]:
        # Prefer what the transport says over the keepalive's view when both ended together.
        ordered = sorted(done, key=lambda t: tasks[t] != "serve")
        for task in ordered:
            if tasks[task] == "churn":
                session.draining = True
                await self._handler.drain(session)
                await self._close(session, CloseCode.NORMAL_CLOSURE, "probe churn")
                return "churn", None
            exc = task.exception()
            if isinstance(exc, ConnectionClosed):
                return classify_closed(exc)
            if isinstance(exc, _Stalled):
                return "stalled", None
            if isinstance(exc, SessionEnded):
                await self._close(session, exc.close_code, exc.reason)
                return exc.reason, None
            if exc is not None:
                raise exc
        # The handler returned: it chose to end the session.
        await self._close(session, CloseCode.NORMAL_CLOSURE, "probe done")
        return "churn", None

    async def _close(
        self, session: Session, code: int, reason: str, within: float | None = None
    ) -> None:
        limit = self._cfg.close_timeout if within is None else min(within, self._cfg.close_timeout)
        try:
            async with asyncio.timeout(limit):
                await session.ws.close(code, reason)
        except (TimeoutError, OSError):
            session.ws.transport.abort()

    async def _ping(self, session: Session) -> None:
        cfg = self._cfg.keepalive
        while True:
            await asyncio.sleep(cfg.interval)
            try:
                async with asyncio.timeout(cfg.timeout):
                    pong = await session.ws.ping()
                    await pong
            except TimeoutError:
                raise _Stalled(f"no pong within {cfg.timeout}s") from None

    async def _keepalive_message(self, session: Session) -> None:
        cfg = self._cfg.keepalive
        assert cfg.message is not None
        silence_ns = int((cfg.interval + cfg.timeout) * 1e9)
        interval_ns = int(cfg.interval * 1e9)
        next_send = time.perf_counter_ns() + interval_ns
        while True:
            # Wake for whichever comes first: the next keepalive, or the moment silence is a stall.
            wake = min(next_send, session.last_inbound_ns + silence_ns)
            await asyncio.sleep(max(0, wake - time.perf_counter_ns()) / 1e9)
            now = time.perf_counter_ns()
            if now - session.last_inbound_ns >= silence_ns:
                raise _Stalled(f"no data for {cfg.interval + cfg.timeout}s")
            if now >= next_send:
                next_send += interval_ns
                try:
                    async with asyncio.timeout(cfg.timeout):
                        await session.ws.send(cfg.message)
                except TimeoutError:
                    # The peer stopped reading: our writes back up although its data still flows.
                    raise _Stalled(f"keepalive not written within {cfg.timeout}s") from None

    def _redact(self, text: str) -> str:
        # Library errors may quote the URL, which can carry a key in its query string.
        return text.replace(self._url, self._target)
