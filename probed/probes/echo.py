"""WebSocket echo probe: open-loop application messages on one held session, timed round trip.

Messages leave on a fixed schedule whatever the replies do, so a slow or stalled server shows up
as large latencies and loss rather than as a quieter probe. Each reply is matched to its message by
a JSON field or as the raw echoed text; sequence numbers are per session (epoch), so a reconnect is
never miscounted as loss or reordering.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

import structlog
from websockets.exceptions import ConnectionClosed

from probed import logs
from probed.config import EchoProbeConfig
from probed.connection import Session, Supervisor
from probed.delivery import DeliveryTracker
from probed.dial import ConnectError
from probed.matching import Filter, Ignored
from probed.metrics import ProbeMetrics
from probed.probes.messages import MessageMetrics, render_message, send_open_loop
from probed.template import Template


class EchoProbe:
    def __init__(
        self,
        cfg: EchoProbeConfig,
        metrics: ProbeMetrics,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._msg = MessageMetrics(
            metrics,
            metrics.latency(
                "probe_message_rtt_seconds",
                "Round trip of an application message on a held session.",
                primary=True,
            ),
        )
        self._log = log
        self._template = Template(cfg.message.template)
        match = cfg.message.match
        self._json_path = match.json_
        # Raw matching compares the echoed text itself; otherwise a bounded JSON filter decides.
        self._filter = (
            None
            if match.json_ is None
            else Filter(match.json_, [condition.build() for condition in match.where])
        )
        # Ids carry a per-run prefix so replies meant for another prober on a shared server, or
        # for this probe before a restart, are never matched.
        self._run_id = secrets.token_hex(3)
        self._tracker = DeliveryTracker(int(cfg.timeout * 1e9))
        # One timer for the oldest message in flight, armed when a message leaves: a callback
        # every few seconds per probe, where a sweeping task woke every second.
        self._expiry: asyncio.TimerHandle | None = None
        self._seq = 0
        self.supervisor = Supervisor(
            cfg,
            metrics=metrics.session(),
            handler=self,
            log=log,
            variables={"probe": cfg.name},
        )

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.supervisor.run())
                tg.create_task(
                    send_open_loop(
                        self._cfg.interval, self._cfg.timeout, self.supervisor, self.send
                    )
                )
        finally:
            if self._expiry is not None:
                self._expiry.cancel()
                self._expiry = None

    # -- SessionHandler -------------------------------------------------------------------------

    async def setup(self, session: Session) -> None:
        self._seq = 0
        self._tracker.start_epoch()

    async def serve(self, session: Session) -> None:
        while True:
            data, at_ns = await session.recv()
            self._on_reply(data, at_ns)

    async def drain(self, session: Session) -> None:
        # Replies still missing after `timeout` are lost anyway; churn then closes regardless.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._cfg.timeout):
                await self._tracker.idle.wait()

    def ended(self, session: Session, reason: str) -> None:
        # In flight when the session died: the service never delivered them.
        self._msg.lost(self._tracker.settle(), "in flight when the session ended")

    # -- sending --------------------------------------------------------------------------------

    async def send(self, session: Session) -> str:
        seq = self._seq
        self._seq += 1
        ident = f"{self._run_id}-{session.epoch}-{seq}"
        payload = render_message(self._template, session, ident, seq, self._cfg.name)
        key = ident if self._json_path else payload
        # Registered before the write: a fast reply can be read while send() awaits the drain.
        self._tracker.sent(key, seq, time.perf_counter_ns())
        self._msg.sent()
        if self._expiry is None:
            self._arm_expiry()
        await session.send(payload)
        return key

    # -- receiving ------------------------------------------------------------------------------

    def _on_reply(self, data: str | bytes, at_ns: int) -> None:
        if self._filter is None:
            key = data if isinstance(data, str) else data.decode("utf-8", "replace")
        else:
            verdict = self._filter.classify(data)
            if isinstance(verdict, Ignored):
                # Not a reply by the configured conditions (room chatter, a broadcast beside
                # the ack): ignored. A would-be reply that cannot be read: unmatched.
                if verdict.reason == "filtered":
                    self._msg.ignored("filtered")
                else:
                    self._msg.unmatched(verdict.reason)
                return
            assert verdict.id is not None
            key = verdict.id
        got = self._tracker.received(key, at_ns)
        answered = self._msg.record(got, at_ns)
        if answered:
            self._metrics.set_success(True)
            assert got.sent is not None
            if logs.debug_enabled():
                self._log.debug(
                    "reply", seq=got.sent.seq, rtt_ms=round((at_ns - got.sent.sent_ns) / 1e6, 3)
                )
        elif got.lost_now:
            self._metrics.set_success(False)

    def _arm_expiry(self) -> None:
        deadline = self._tracker.next_deadline_ns()
        if deadline is not None:
            delay = max(0, deadline - time.perf_counter_ns()) / 1e9
            self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        lost = self._tracker.expire(time.perf_counter_ns())
        if lost:
            if logs.debug_enabled():
                for sent in lost:
                    self._log.debug("lost", seq=sent.seq)
            self._msg.lost(len(lost))
            self._metrics.set_success(False)
        self._arm_expiry()

    # -- one-shot -------------------------------------------------------------------------------

    async def once(self) -> bool:
        """Connect, send one message, wait for its reply or timeout, close. True if answered.

        Feeds the probe's status like a held session does, so `probed once` prints the same
        timeline the status page shows.
        """
        status = self._metrics.status
        try:
            session = await self.supervisor.connect()
        except ConnectError as exc:
            self._log.error("connect failed", reason=exc.reason, phase=exc.phase, detail=exc.detail)
            status.error("connect failed", exc.reason, f"{exc.phase}: {exc.detail}")
            status.connect_failed(exc.reason, f"{exc.phase}: {exc.detail}")
            self._metrics.set_success(False)
            return False
        phases = self.supervisor.phases
        status.session_up(phases)
        self._log.info("connected", **{f"{k}_ms": round(v * 1e3, 2) for k, v in phases.items()})
        reader = asyncio.create_task(self.serve(session))
        idle = asyncio.create_task(self._tracker.idle.wait())
        answered = False
        close: tuple[int | None, str] = (None, "")
        try:
            key = await self.send(session)
            status.note("sent", f"seq {self._seq - 1}")
            # Wait for the reply, or for the reader to end because the server closed on us.
            await asyncio.wait(
                {reader, idle}, timeout=self._cfg.timeout, return_when=asyncio.FIRST_COMPLETED
            )
            answered = self._tracker.was_answered(key)
            if not answered:
                close = self._report_no_reply(session, reader)
            self._metrics.set_success(answered)
            return answered
        finally:
            # One message, judged here: the held session's expiry timer has no say.
            if self._expiry is not None:
                self._expiry.cancel()
                self._expiry = None
            idle.cancel()
            reader.cancel()
            await asyncio.gather(reader, idle, return_exceptions=True)
            await session.ws.close()
            code, reason = close
            status.session_down(
                "server_close" if code is not None else "done",
                code,
                reason,
                failure=not answered,
            )

    def _report_no_reply(
        self, session: Session, reader: asyncio.Task[None]
    ) -> tuple[int | None, str]:
        """Say why no reply came; (close code, reason) when the server closed the session."""
        exc = reader.exception() if reader.done() and not reader.cancelled() else None
        status = self._metrics.status
        if isinstance(exc, ConnectionClosed):
            rcvd = exc.rcvd
            code = rcvd.code if rcvd is not None else 1006
            reason = session.redact(rcvd.reason) if rcvd is not None else ""
            self._log.error(
                "no reply: the server closed the session",
                close_code=code,
                close_reason=reason or None,
            )
            status.failed("no reply", "the server closed the session")
            status.error("no reply", "server_close", f"close {code} {reason!r}")
            return code, reason
        self._log.error("no reply", timeout_s=self._cfg.timeout)
        status.failed("no reply", f"nothing within {self._cfg.timeout}s")
        status.error("no reply", "timeout", f"nothing within {self._cfg.timeout}s")
        return None, ""
