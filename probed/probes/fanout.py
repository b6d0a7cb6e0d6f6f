"""Fan-out probe: one publisher, K subscribers, one-way delivery timed on one clock.

What users of chat, presence and collaboration feel is publisher-to-subscriber time, which an
echo cannot see. Publisher and subscribers are supervised sessions in this process, so send and
receive times come from the same monotonic clock: no cross-host clock sync. Each subscriber keeps
its own delivery tracker with epochs: a message is expected only at subscribers that were up when
it was published, so a reconnect of either side is never counted as loss; a message that reaches
only some subscribers is loss at the others. Messages from other publishers are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass

import structlog

from probed.config.schema.endpoint import WebSocketEndpoint
from probed.config.schema.fanout import FanoutProbeConfig
from probed.connection import Session, Supervisor
from probed.delivery import DeliveryTracker, Outcome
from probed.dial import ConnectError
from probed.matching import Filter, Ignored
from probed.metrics import ProbeMetrics
from probed.probes.messages import MessageMetrics, render_message, send_open_loop
from probed.template import Template


@dataclass
class _Fan:
    """One published message on its way to the subscribers that were up when it left."""

    sent_ns: int
    deadline_ns: int
    waiting: int


class _Subscriber:
    """A subscriber session: reads, filters, and times deliveries into its own tracker."""

    def __init__(self, probe: FanoutProbe, endpoint: WebSocketEndpoint, timeout_ns: int) -> None:
        self._probe = probe
        self.tracker = DeliveryTracker(timeout_ns)
        self.supervisor = Supervisor(
            endpoint,
            metrics=probe.metrics.session("subscriber"),
            handler=self,
            log=probe.log,
            variables={"probe": probe.name},
        )

    @property
    def ready(self) -> bool:
        session = self.supervisor.session
        return session is not None and not session.draining

    async def setup(self, session: Session) -> None:
        self.tracker.start_epoch()

    async def serve(self, session: Session) -> None:
        while True:
            data, at_ns = await session.recv()
            self._probe.delivered(self, data, at_ns)

    async def drain(self, session: Session) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.tracker.timeout_ns / 1e9):
                await self.tracker.idle.wait()

    def ended(self, session: Session, reason: str) -> None:
        # Not loss: this subscriber was gone, the service did not drop the messages it missed.
        self.tracker.settle()


class _Publisher:
    """The publisher session: sends on the probe's schedule; whatever it receives is not timed."""

    def __init__(self, probe: FanoutProbe, endpoint: WebSocketEndpoint) -> None:
        self.supervisor = Supervisor(
            endpoint,
            metrics=probe.metrics.session("publisher"),
            handler=self,
            log=probe.log,
            variables={"probe": probe.name},
        )

    async def setup(self, session: Session) -> None:
        return None

    async def serve(self, session: Session) -> None:
        while True:
            await session.recv()  # acks and room traffic: the subscribers' side is what counts

    async def drain(self, session: Session) -> None:
        return None

    def ended(self, session: Session, reason: str) -> None:
        return None  # in-flight messages may still reach the subscribers


class FanoutProbe:
    def __init__(
        self,
        cfg: FanoutProbeConfig,
        metrics: ProbeMetrics,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.name = cfg.name
        self.metrics = metrics
        self.log = log
        self._cfg = cfg
        self._timeout_ns = int(cfg.timeout * 1e9)
        self._msg = MessageMetrics(
            metrics,
            metrics.latency(
                "probe_message_delivery_seconds",
                "Publish to receipt at one subscriber (one way, one clock).",
                primary=True,
            ),
            answer="delivered",
        )
        self._complete = metrics.latency(
            "probe_fanout_complete_seconds",
            "Publish until the last subscriber that was up has the message.",
        )
        self._published = metrics.counter(
            "probe_fanout_published_total", "Messages the publisher sent."
        )
        match = cfg.message.match
        assert match.json_ is not None
        self._filter = Filter(match.json_, [condition.build() for condition in match.where])
        self._template = Template(cfg.message.template)
        # Ids carry a per-run prefix: messages from other publishers (or an earlier run of this
        # one) on the same channel are recognised as not ours and ignored.
        self._prefix = f"{secrets.token_hex(3)}-"
        self._seq = 0
        self._fans: dict[str, _Fan] = {}
        self._fan_done = asyncio.Event()
        self._publisher = _Publisher(self, cfg.publisher)
        self._subscribers = [
            _Subscriber(self, cfg.subscribers, self._timeout_ns)
            for _ in range(cfg.subscribers.count)
        ]

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._publisher.supervisor.run())
            for sub in self._subscribers:
                tg.create_task(sub.supervisor.run())
            tg.create_task(
                send_open_loop(
                    self._cfg.interval, self._cfg.timeout, self._publisher.supervisor, self.publish
                )
            )
            tg.create_task(self._expire_loop())

    # -- publishing -----------------------------------------------------------------------------

    async def publish(self, session: Session) -> str:
        seq = self._seq
        self._seq += 1
        key = f"{self._prefix}{session.epoch}-{seq}"
        payload = render_message(self._template, session, key, seq, self.name)
        now = time.perf_counter_ns()
        waiting = 0
        for sub in self._subscribers:
            if sub.ready:
                sub.tracker.sent(key, seq, now)
                self._msg.sent()
                waiting += 1
        if waiting:
            self._fans[key] = _Fan(now, now + self._timeout_ns, waiting)
        self._published.inc()
        await session.send(payload)
        return key

    # -- delivery -------------------------------------------------------------------------------

    def delivered(self, sub: _Subscriber, data: str | bytes, at_ns: int) -> None:
        verdict = self._filter.classify(data)
        if isinstance(verdict, Ignored):
            if verdict.reason == "filtered":
                self._msg.ignored("filtered")
            else:
                self._msg.unmatched(verdict.reason)
            return
        key = verdict.id
        assert key is not None
        if not key.startswith(self._prefix):
            self._msg.ignored("foreign")
            return
        got = sub.tracker.received(key, at_ns)
        if self._msg.record(got, at_ns):
            fan = self._fans.get(key)
            if fan is not None:
                fan.waiting -= 1
                if fan.waiting == 0:
                    del self._fans[key]
                    self._complete.observe(fan.sent_ns, at_ns)
                    self.metrics.set_success(True)
                    self._fan_done.set()
        elif got.outcome is Outcome.LATE and got.lost_now:
            self.metrics.set_success(False)

    async def _expire_loop(self) -> None:
        step = min(self._cfg.interval, self._cfg.timeout) / 2
        while True:
            await asyncio.sleep(step)
            now = time.perf_counter_ns()
            lost = sum(len(sub.tracker.expire(now)) for sub in self._subscribers)
            if lost:
                self._msg.lost(lost)
                self.metrics.set_success(False)
            for key in [k for k, fan in self._fans.items() if fan.deadline_ns <= now]:
                del self._fans[key]  # incomplete: some subscriber never had it

    # -- one-shot -------------------------------------------------------------------------------

    async def once(self) -> bool:
        """Connect everyone, publish one message, wait until every subscriber has it."""
        sessions: list[Session] = []
        readers: list[asyncio.Task[None]] = []
        try:
            for sub in self._subscribers:
                session = await sub.supervisor.connect()
                sessions.append(session)
                sub.supervisor.session = session
                readers.append(asyncio.create_task(sub.serve(session)))
            publisher = await self._publisher.supervisor.connect()
            sessions.append(publisher)
            readers.append(asyncio.create_task(self._publisher.serve(publisher)))
        except ConnectError as exc:
            self.log.error(  # noqa: TRY400  # a classified failure: its reason, not a traceback
                "connect failed", reason=exc.reason, phase=exc.phase, detail=exc.detail
            )
            self.metrics.connect_failed(exc.reason, f"{exc.phase}: {exc.detail}")
            return False
        # One cycle for the whole run in the status, so `probed once` prints its timeline.
        status = self.metrics.status
        status.session_up(self._publisher.supervisor.phases, "publisher")
        status.note("all connected", f"{len(sessions) - 1} subscriber(s) and the publisher")
        delivered = False
        try:
            self._fan_done.clear()
            key = await self.publish(publisher)
            status.note("published", key)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._cfg.timeout):
                    await self._fan_done.wait()
            fan = self._fans.get(key)
            if fan is not None:
                self.log.error(
                    "not delivered everywhere",
                    missing=fan.waiting,
                    subscribers=len(self._subscribers),
                )
            delivered = fan is None
            if fan is not None:
                status.failed("not delivered everywhere", f"{fan.waiting} subscriber(s) missing")
            return delivered
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            for session in sessions:
                await session.ws.close()
            status.session_down("done", None, "", failure=not delivered)
