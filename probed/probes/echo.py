"""WebSocket echo probe: open-loop application messages on one held session, timed round trip.

Messages leave on a fixed schedule whatever the replies do, so a slow or stalled server shows up
as large latencies and loss rather than as a quieter probe. Each reply is matched to its message by
a JSON field or as the raw echoed text; sequence numbers are per session (epoch), so a reconnect is
never miscounted as loss or reordering.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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
from probed.probes.messages import MessageMetrics
from probed.template import Template


@functools.cache
def _template(text: str) -> Template:
    # Templates are immutable once parsed, and a large fleet repeats the same few texts.
    return Template(text)


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
        self._template = _template(cfg.message.template)
        # The wall clock is formatted per message only for a template that shows it.
        self._send_time = "send_time" in self._template.names
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
                tg.create_task(self._send_open_loop())
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

    async def _send_open_loop(self) -> None:
        """Send on the fixed schedule whenever the session is up and not draining.

        The rules of delivery.open_loop and messages.send_open_loop, driven by a timer instead
        of a task: at 10,000 sessions a task step, a sleep's future and an async generator per
        message were a tenth of probed's CPU. A message that websockets would not make wait is
        written at once (no deadline of its own); otherwise the send is awaited in a task under
        `timeout`, and the slots that come round meanwhile are skipped, not bursted, as the
        loop of messages.send_open_loop does: a peer that stopped reading must not stop the
        schedule, and the supervisor classifies the session.
        """
        loop = asyncio.get_running_loop()
        interval = self._cfg.interval
        start = loop.time()
        slot = 0
        timer: asyncio.TimerHandle | None = None
        waiting: asyncio.Task[None] | None = None
        failed: asyncio.Future[None] = loop.create_future()

        def arm() -> None:
            nonlocal slot, timer
            slot += 1
            due = start + slot * interval
            current = loop.time()
            if current - due > interval:
                # The loop was starved past a whole slot: go on from the current one.
                slot = int((current - start) / interval) + 1
                due = start + slot * interval
            timer = loop.call_at(due, tick)

        def tick() -> None:
            nonlocal waiting
            try:
                session = self.supervisor.session
                if waiting is None and session is not None and not session.draining:
                    _key, payload = self._next_message(session)
                    if not session.send_now(payload):
                        waiting = loop.create_task(self._send_waiting(session, payload))
                        waiting.add_done_callback(sent)
            except Exception as exc:  # a probe crash, as if the sending task had raised it
                if not failed.done():
                    failed.set_exception(exc)
                return
            arm()

        def sent(task: asyncio.Task[None]) -> None:
            nonlocal waiting
            waiting = None
            exc = None if task.cancelled() else task.exception()
            if exc is not None and not failed.done():
                failed.set_exception(exc)

        arm()
        try:
            await failed
        finally:
            if timer is not None:
                timer.cancel()
            if waiting is not None:
                waiting.cancel()

    async def _send_waiting(self, session: Session, payload: str) -> None:
        try:
            async with asyncio.timeout(self._cfg.timeout):
                await session.send(payload)
        except (ConnectionClosed, TimeoutError):
            pass

    async def send(self, session: Session) -> str:
        """Send the next message; returns the key its reply is matched by."""
        key, payload = self._next_message(session)
        await session.send(payload)
        return key

    def _next_message(self, session: Session) -> tuple[str, str]:
        """The next message and its key, in flight from now: registered before it is written,
        because a fast reply can be read while a send waits for the buffer to drain."""
        seq = self._seq
        self._seq += 1
        ident = f"{self._run_id}-{session.epoch}-{seq}"
        values = {**session.variables, "id": ident, "seq": str(seq), "probe": self._cfg.name}
        if self._send_time:
            values["send_time"] = f"{time.time():.6f}"
        payload = self._template.render(values)
        key = ident if self._json_path else payload
        self._tracker.sent(key, seq, time.perf_counter_ns())
        self._msg.sent()
        if self._expiry is None:
            self._arm_expiry()
        return key, payload

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
