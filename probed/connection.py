"""The WebSocket session supervisor every WebSocket-based probe runs on.

It dials (dial.py) and then runs the probe's own setup step, under the same per-phase deadline;
holds the session with a keepalive; classifies how each session ends; and reconnects with capped,
jittered exponential backoff, timing the reconnect from the moment the loss was detected. Probes
supply a `SessionHandler`: what to do once connected, nothing about connecting.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from probed.app_framing import FramingClosed, SessionFraming, SetupFailed
from probed.config import ReconnectConfig
from probed.config.schema.framing import FramingConfig
from probed.dial import ConnectError, Dialer, Endpoint, TimedConnection, cert_expiry
from probed.matching import Filter, Matched
from probed.metrics import SessionMetrics
from probed.ratelimit import LogLimiter, log_limited
from probed.redact import Redactor
from probed.scripting import SetupScript
from probed.template import Template
from probed.wsframe import write_now

# A hostile Retry-After must not park a probe for days, nor a zero one make it spin.
MAX_RETRY_AFTER = 3600.0
# Close codes a client sends when the *server* broke the protocol (RFC 6455 section 7.4.1).
_PROTOCOL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1009})
_SHUTDOWN_CLOSE_TIMEOUT = 3.0
# What websockets (and every browser) reports when a connection ended without a close frame.
_NO_CLOSE_FRAME = 1006


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


class ServerGone(SessionEnded):
    """The server ended the session inside its protocol (a Socket.IO disconnect packet)."""

    reason = "server_close"
    close_code = CloseCode.NORMAL_CLOSURE


class _Stalled(Exception):
    pass


@dataclass
class Session:
    """One usable connection: an epoch. Sequence numbers and in-flight state belong to it."""

    ws: TimedConnection
    epoch: int
    started_ns: int
    # The provider's latest resumption handle: the handler updates it as the provider sends new
    # ones, and the supervisor carries it into the next session's setup.
    resume_handle: str | None
    redactor: Redactor = field(default_factory=Redactor)
    # Values the setup steps captured (a session id, a room id), for the probe's own templates.
    variables: dict[str, str] = field(default_factory=dict)
    # An application framing (Socket.IO, graphql-transport-ws): messages pass through it.
    framing: SessionFraming | None = None
    last_inbound_ns: int = field(default_factory=time.perf_counter_ns)
    draining: bool = False
    _inbox: deque[tuple[str | bytes, int]] = field(default_factory=deque)
    # Application heartbeat answers: matched here and kept from the probe's own reading.
    heartbeat_filter: Filter | None = None
    _heartbeat_answer: asyncio.Event | None = None

    def expect_heartbeat(self) -> asyncio.Event | None:
        """An event set when the answer to the heartbeat about to be sent arrives."""
        if self.heartbeat_filter is None:
            return None
        self._heartbeat_answer = asyncio.Event()
        return self._heartbeat_answer

    def _is_heartbeat_answer(self, data: str | bytes) -> bool:
        if self.heartbeat_filter is None:
            return False
        if not isinstance(self.heartbeat_filter.classify(data), Matched):
            return False
        if self._heartbeat_answer is not None:
            self._heartbeat_answer.set()
        return True

    def redact(self, text: str) -> str:
        """A string from the network with every configured secret blanked out.

        A hostile or careless server may reflect our Authorization header (into a close reason,
        an error frame); nothing it sends reaches a log unredacted. Also bounded in length.
        """
        return self.redactor(text)

    async def recv_frame(self) -> tuple[str | bytes, int]:
        """The next frame off the wire and the instant its bytes arrived, before any parsing."""
        data = await self.ws.recv()
        arrived = self.ws.arrivals.popleft() if self.ws.arrivals else time.perf_counter_ns()
        self.last_inbound_ns = arrived
        return data, arrived

    async def recv(self) -> tuple[str | bytes, int]:
        """The next application message and the instant its frame arrived.

        Through a framing, protocol traffic (pings, acks the server asks for) is answered here
        and an application message keeps its frame's arrival time.
        """
        if self.framing is None:
            while True:
                data, arrived = await self.recv_frame()
                if not self._is_heartbeat_answer(data):
                    return data, arrived
        while not self._inbox:
            data, arrived = await self.recv_frame()
            try:
                replies, messages = self.framing.unwrap(data)
            except FramingClosed as exc:
                raise ServerGone(exc.reason) from None
            for reply in replies:
                await self.ws.send(reply)
            self._inbox.extend(
                (message, arrived) for message in messages if not self._is_heartbeat_answer(message)
            )
        return self._inbox.popleft()

    async def send(self, data: str | bytes) -> None:
        if self.framing is not None and isinstance(data, str):
            data = self.framing.wrap(data)
        # A peer that stopped reading would otherwise collect every message we send.
        self.ws.check_write_buffer(len(data))
        await self.ws.send(data)

    def send_now(self, data: str | bytes) -> bool:
        """Write a message at once if websockets would not wait (probed.wsframe); True if written.

        False: nothing was written (a framing, flow control, a closing connection), and the
        caller awaits `send`, which waits or raises as websockets does.
        """
        if self.framing is not None:
            return False
        self.ws.check_write_buffer(len(data))
        return write_now(self.ws, data)

    async def send_audio(self, chunk: str | bytes) -> None:
        """As send, for paced audio: written at once when websockets would not wait.

        probed.wsframe: 10,000 chunks a second on one loop. Used by the speech and echo probes:
        the voice-agent probe's go-away tests failed with every send on this path (not
        understood yet).
        """
        if not self.send_now(chunk):
            await self.send(chunk)


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


# Ends after which the next session starts at once: the probe or the provider chose them.
_AT_ONCE = frozenset({"churn", "go_away"})


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for member in exc.exceptions:
            yield from _leaves(member)
    else:
        yield exc


def _why(exc: BaseException | None) -> BaseException | None:
    """The exception that says how a session ended, also out of an ExceptionGroup.

    A handler that sends and reads at once (a TaskGroup) fails with a group. The handler's own
    verdict (a go-away, an application timeout) comes first, then what the transport says (a
    server close, a stall); anything else is a handler failure.
    """
    if exc is None:
        return None
    leaves = list(_leaves(exc))
    for kind in (SessionEnded, ConnectionClosed, _Stalled):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]


def classify_closed(exc: ConnectionClosed) -> tuple[str, int]:
    """How a session that the probe did not close on purpose ended: (reason, close code)."""
    rcvd, sent = exc.rcvd, exc.sent
    if sent is not None and sent.code in _PROTOCOL_CLOSE_CODES and not exc.rcvd_then_sent:
        return "protocol_error", rcvd.code if rcvd is not None else _NO_CLOSE_FRAME
    if rcvd is not None:
        return "server_close", rcvd.code
    return "reset", _NO_CLOSE_FRAME


class Supervisor:
    """Keeps one session to an endpoint alive for a handler, for as long as it runs.

    With `cycle`, the handler works in cycles (one utterance per session, say): when its `serve`
    returns, the session is closed as "cycle" and the next one starts at the next multiple of
    `cycle` seconds from the first start, never as a tight reconnect loop.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        metrics: SessionMetrics,
        handler: SessionHandler,
        log: structlog.typing.FilteringBoundLogger,
        cycle: float | None = None,
        variables: Mapping[str, str] | None = None,
    ) -> None:
        self._dialer = Dialer(endpoint)
        self._cfg = endpoint.connection
        self._backoff = Backoff(self._cfg.reconnect)
        self._metrics = metrics
        self._handler = handler
        self._log = log if metrics.role is None else log.bind(role=metrics.role)
        self._cycle = cycle
        self._variables = dict(variables or {})
        self._script = SetupScript(endpoint.setup, self._variables, self._log)
        expect = self._cfg.keepalive.expect
        self._heartbeat_filter = None if expect is None else expect.build()
        self._framing = endpoint.framing
        self._epoch = 0
        self._redactor = self._dialer.redactor
        # A flapping target must not flood the journal; the counters still see every event.
        self._limiter = LogLimiter()
        # Carried from one session into the next setup, for providers that can resume.
        self.resume_handle: str | None = None
        self.session: Session | None = None

    @property
    def phases(self) -> dict[str, float]:
        """Durations of the latest connect's phases, in seconds."""
        return dict(self._dialer.phases)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        first = loop.time()
        attempt = 0
        loss_ns: int | None = None
        while True:
            try:
                session = await self.connect()
            except ConnectError as exc:
                attempt += 1
                delay = self._backoff.delay(attempt, exc.retry_after)
                self._metrics.connect_failed(exc.reason, f"{exc.phase}: {exc.detail}")
                log_limited(
                    self._limiter,
                    self._log,
                    "warning",
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
            phases = self.phases
            self._metrics.connected_ok(
                phases=phases,
                total=sum(phases.values()),
                reconnect=reconnect_s,
                cert_expiry=cert_expiry(session.ws),
            )
            log_limited(
                self._limiter,
                self._log,
                "info",
                "session up",
                epoch=session.epoch,
                **{f"{k}_ms": round(v * 1e3, 2) for k, v in phases.items()},
                reconnect_s=None if reconnect_s is None else round(reconnect_s, 3),
            )
            reason, code, ended_ns = await self.hold(session)
            self.resume_handle = session.resume_handle
            lived = (ended_ns - session.started_ns) / 1e9
            if lived >= self._cfg.reconnect.reset_after or reason in _AT_ONCE:
                attempt = 0
            else:
                attempt += 1
            if reason == "cycle":
                assert self._cycle is not None
                # The next slot of the cycle schedule; not timed as a reconnect.
                now = loop.time()
                delay = self._cycle - (now - first) % self._cycle
                loss_ns = None
            else:
                delay = 0.0 if reason in _AT_ONCE else self._backoff.delay(attempt)
                loss_ns = ended_ns
            log_limited(
                self._limiter,
                self._log,
                "info",
                "session down",
                epoch=session.epoch,
                reason=reason,
                close_code=code,
                close_reason=session.redact(session.ws.close_reason or "") or None,
                lived_s=round(lived, 3),
                reconnect_in_s=round(delay, 3),
            )
            if delay:
                await asyncio.sleep(delay)

    # -- connecting ----------------------------------------------------------------------------

    async def connect(self) -> Session:
        """Dial, then the handler's setup under the same per-phase deadline."""
        conn = await self._dialer.dial()
        self._epoch += 1
        session = Session(
            ws=conn,
            epoch=self._epoch,
            started_ns=0,
            resume_handle=self.resume_handle,
            heartbeat_filter=self._heartbeat_filter,
            redactor=self._redactor,
        )
        limit = self._cfg.connect_timeout
        started = time.perf_counter()
        try:
            if self._framing is not None:
                await self._frame_setup(session, self._framing, limit)
            await self._script.run(session)
        except ConnectError:
            conn.transport.abort()
            raise
        try:
            async with asyncio.timeout(limit):
                await self._handler.setup(session)
        except TimeoutError:
            conn.transport.abort()
            raise ConnectError("timeout", "setup", f"not ready within {limit}s") from None
        except (SessionEnded, ConnectionClosed) as exc:
            conn.transport.abort()
            raise ConnectError("setup", "setup", type(exc).__name__) from None
        self._dialer.mark("setup", started)
        session.started_ns = session.last_inbound_ns = time.perf_counter_ns()
        return session

    async def _frame_setup(self, session: Session, cfg: FramingConfig, limit: float) -> None:
        """The framing's own setup (Engine.IO open and namespace connect; connection_init)."""
        framing = session.framing = SessionFraming(cfg)

        async def recv() -> str | bytes:
            return (await session.recv_frame())[0]

        for step in framing.steps():
            try:
                async with asyncio.timeout(limit):
                    await framing.setup(step, session.ws.send, recv)
            except TimeoutError:
                raise ConnectError(
                    "timeout", "setup", f"{step.name}: no answer in {limit}s"
                ) from None
            except SetupFailed as exc:
                detail = session.redact(exc.detail)
                raise ConnectError(
                    "setup", "setup", f"{step.name}: {exc.reason} {detail}"
                ) from None
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                raise ConnectError("setup", "setup", f"{step.name}: closed with {code}") from None
        session._inbox.extend((text, session.last_inbound_ns) for text in framing.early)

    # -- holding -------------------------------------------------------------------------------

    async def hold(self, session: Session) -> tuple[str, int | None, int]:
        """Run the handler on a session until it ends.

        Returns (reason, close code received, when the end was detected in perf_counter ns).
        """
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
        ended_ns = time.perf_counter_ns()
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            ended_ns = time.perf_counter_ns()
            reason, code = await self._conclude(session, done, tasks)
        except asyncio.CancelledError:
            # Whatever was in flight is not measured: it was ended by us, not by the service
            # (a voice turn cut short would otherwise be logged and counted as disconnected).
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
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
            self._metrics.disconnected(reason, code, session.redact(session.ws.close_reason or ""))
        return reason, code, ended_ns

    async def _conclude(  # noqa: PLR0911  # one return per way a session can end
        self,
        session: Session,
        done: set[asyncio.Task[None]],
        tasks: Mapping[asyncio.Task[None], str],
    ) -> tuple[str, int | None]:
        if session.ws.flooded:
            # We cut it ourselves: the peer made us hold more than a session may (dial.py).
            return "flood", None
        # Prefer what the transport says over the keepalive's view when both ended together.
        ordered = sorted(done, key=lambda t: tasks[t] != "serve")
        for task in ordered:
            if tasks[task] == "churn":
                session.draining = True
                await self._handler.drain(session)
                await self._close(session, CloseCode.NORMAL_CLOSURE, "probe churn")
                return "churn", None
            exc = _why(task.exception())
            if isinstance(exc, ConnectionClosed):
                return classify_closed(exc)
            if isinstance(exc, _Stalled):
                return "stalled", None
            if isinstance(exc, GoAway):
                # The provider is about to end the session: let work in flight finish, then
                # reconnect at once (no backoff) with the latest resumption handle.
                session.draining = True
                await self._handler.drain(session)
                await self._close(session, exc.close_code, exc.reason)
                return exc.reason, None
            if isinstance(exc, SessionEnded):
                await self._close(session, exc.close_code, exc.reason)
                return exc.reason, None
            if exc is not None:
                # A handler bug or a peer that made it trip: this session ends, the probe goes
                # on under the normal backoff. Logged once, with the traceback, to be fixed.
                log_limited(
                    self._limiter, self._log, "error", "handler failed; session ends", exc_info=exc
                )
                await self._close(session, CloseCode.INTERNAL_ERROR, "probe error")
                return "error", None
        # The handler returned: it chose to end the session.
        await self._close(session, CloseCode.NORMAL_CLOSURE, "probe done")
        return ("cycle" if self._cycle is not None else "churn"), None

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
        template = Template(cfg.message)
        silence_ns = int((cfg.interval + cfg.timeout) * 1e9)
        interval_ns = int(cfg.interval * 1e9)
        next_send = time.perf_counter_ns() + interval_ns
        seq = 0
        while True:
            # Wake for whichever comes first: the next keepalive, or the moment silence is a stall.
            wake = min(next_send, session.last_inbound_ns + silence_ns)
            await asyncio.sleep(max(0, wake - time.perf_counter_ns()) / 1e9)
            now = time.perf_counter_ns()
            if now - session.last_inbound_ns >= silence_ns:
                raise _Stalled(f"no data for {cfg.interval + cfg.timeout}s")
            if now < next_send:
                continue
            next_send += interval_ns
            text = template.render(
                {
                    **self._variables,
                    **session.variables,
                    "seq": str(seq),
                    "send_time": f"{time.time():.6f}",
                }
            )
            seq += 1
            answered = session.expect_heartbeat()
            try:
                async with asyncio.timeout(cfg.timeout):
                    # Through the session: a framing (Socket.IO, GraphQL) wraps it too.
                    await session.send(text)
            except TimeoutError:
                # The peer stopped reading: our writes back up although its data still flows.
                raise _Stalled(f"keepalive not written within {cfg.timeout}s") from None
            if answered is not None:
                try:
                    async with asyncio.timeout(cfg.timeout):
                        await answered.wait()
                except TimeoutError:
                    raise _Stalled(f"no heartbeat answer within {cfg.timeout}s") from None
