"""WebSocket echo probe: open-loop application messages on one held session, timed round trip.

Messages leave on a fixed schedule whatever the replies do, so a slow or stalled server shows up
as large latencies and loss rather than as a quieter probe. Each reply is matched to its message by
a JSON field or as the raw echoed text; sequence numbers are per session (epoch), so a reconnect is
never miscounted as loss or reordering.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import structlog
from websockets.exceptions import ConnectionClosed

from probed.config import EchoProbeConfig
from probed.connection import Session, Supervisor
from probed.dial import ConnectError
from probed.metrics import ProbeMetrics

_PLACEHOLDER = re.compile(r"\{(id|seq|send_time|probe)\}")
# How many answered / expired ids to remember for telling duplicates and late replies apart.
_REMEMBERED = 4096


@dataclass(frozen=True, slots=True)
class _Sent:
    seq: int
    sent_ns: int
    deadline_ns: int


class Template:
    """A message template with {id}, {seq}, {send_time} and {probe}; JSON braces pass through."""

    def __init__(self, text: str) -> None:
        self._parts = _PLACEHOLDER.split(text)

    def render(self, values: dict[str, str]) -> str:
        # split() alternates literal text and placeholder names.
        return "".join(part if i % 2 == 0 else values[part] for i, part in enumerate(self._parts))


def dig(obj: Any, path: str) -> Any:
    """The value at a dotted path in decoded JSON, or None."""
    for key in path.split("."):
        if isinstance(obj, dict):
            obj = obj.get(key)
        elif isinstance(obj, list) and key.isdigit() and int(key) < len(obj):
            obj = obj[int(key)]
        else:
            return None
    return obj


class _Remembered(OrderedDict[str, None]):
    def add(self, key: str) -> None:
        self[key] = None
        if len(self) > _REMEMBERED:
            self.popitem(last=False)


class EchoProbe:
    def __init__(
        self,
        cfg: EchoProbeConfig,
        metrics: ProbeMetrics,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self._msg = metrics.messages
        self._log = log
        self._template = Template(cfg.message.template)
        self._json_path = cfg.message.match.json_
        # Ids carry a per-run prefix so replies meant for another prober on a shared server, or
        # for this probe before a restart, are never matched.
        self._run_id = secrets.token_hex(3)
        self._timeout_ns = int(cfg.timeout * 1e9)
        self._inflight: OrderedDict[str, _Sent] = OrderedDict()
        self._answered = _Remembered()
        self._expired = _Remembered()
        self._idle = asyncio.Event()
        self._idle.set()
        self._seq = 0
        self._highest_answered = -1
        self.supervisor = Supervisor(cfg, metrics=metrics, handler=self, log=log)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.supervisor.run())
            tg.create_task(self._schedule())
            tg.create_task(self._expire_loop())

    # -- SessionHandler -------------------------------------------------------------------------

    async def setup(self, session: Session) -> None:
        self._seq = 0
        self._highest_answered = -1

    async def serve(self, session: Session) -> None:
        while True:
            data, at_ns = await session.recv()
            self._on_reply(data, at_ns)

    async def drain(self, session: Session) -> None:
        # Replies still missing after `timeout` are lost anyway; churn then closes regardless.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._cfg.timeout):
                await self._idle.wait()

    def ended(self, session: Session, reason: str) -> None:
        # In flight when the session died: the service never delivered them.
        if self._inflight:
            self._msg.lost.inc(len(self._inflight))
            for key in self._inflight:
                self._expired.add(key)
            self._inflight.clear()
            self._idle.set()

    # -- sending --------------------------------------------------------------------------------

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._cfg.interval
        start = loop.time()
        slot = 0
        while True:
            slot += 1
            due = start + slot * interval
            now = loop.time()
            if now - due > interval:
                # Fell more than a slot behind (the loop was starved): skip, never burst.
                slot = int((now - start) / interval) + 1
                due = start + slot * interval
            await asyncio.sleep(due - now)
            session = self.supervisor.session
            if session is None or session.draining:
                continue
            try:
                # A peer that stopped reading must not stop the schedule: the message stays in
                # flight (and will count as lost) while the next slot comes round.
                async with asyncio.timeout(self._cfg.timeout):
                    await self.send(session)
            except (ConnectionClosed, TimeoutError):
                continue  # the supervisor classifies the loss

    async def send(self, session: Session) -> str:
        seq = self._seq
        self._seq += 1
        ident = f"{self._run_id}-{session.epoch}-{seq}"
        payload = self._template.render(
            {
                "id": ident,
                "seq": str(seq),
                "send_time": f"{time.time():.6f}",
                "probe": self._cfg.name,
            }
        )
        key = ident if self._json_path else payload
        now = time.perf_counter_ns()
        # Registered before the write: a fast reply can be read while send() awaits the drain.
        self._inflight[key] = _Sent(seq, now, now + self._timeout_ns)
        self._idle.clear()
        self._msg.sent.inc()
        await session.send(payload)
        return key

    # -- receiving ------------------------------------------------------------------------------

    def _on_reply(self, data: str | bytes, at_ns: int) -> None:
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        if self._json_path is None:
            key = text
        else:
            try:
                value = dig(json.loads(text), self._json_path)
            except ValueError:
                self._msg.unmatched["not_json"].inc()
                self._log.debug("reply is not JSON", size=len(text))
                return
            if value is None:
                self._msg.unmatched["missing_field"].inc()
                return
            key = str(value)
        sent = self._inflight.pop(key, None)
        if sent is None:
            if key in self._answered:
                self._msg.duplicated.inc()
            elif key in self._expired:
                self._msg.unmatched["late"].inc()
            else:
                self._msg.unmatched["unknown"].inc()
            return
        if not self._inflight:
            self._idle.set()
        if at_ns > sent.deadline_ns:
            # Past its timeout but not yet swept: lost, exactly as if the sweep had come first.
            self._expired.add(key)
            self._msg.lost.inc()
            self._msg.unmatched["late"].inc()
            self._metrics.set_success(False)
            return
        self._answered.add(key)
        if sent.seq < self._highest_answered:
            self._msg.reordered.inc()
        else:
            self._highest_answered = sent.seq
        self._metrics.message_answered(sent.sent_ns, at_ns)
        self._metrics.set_success(True)
        self._log.debug("reply", seq=sent.seq, rtt_ms=round((at_ns - sent.sent_ns) / 1e6, 3))

    async def _expire_loop(self) -> None:
        idle_wait = min(self._cfg.interval, self._cfg.timeout)
        while True:
            if not self._inflight:
                await asyncio.sleep(idle_wait)
                continue
            oldest = next(iter(self._inflight.values()))
            wait_ns = oldest.deadline_ns - time.perf_counter_ns()
            if wait_ns > 0:
                await asyncio.sleep(wait_ns / 1e9)
                continue
            self._expire(time.perf_counter_ns())

    def _expire(self, now_ns: int) -> None:
        lost = 0
        # Insertion order is send order, so expired entries are all at the front.
        while self._inflight:
            key, sent = next(iter(self._inflight.items()))
            if sent.deadline_ns > now_ns:
                break
            del self._inflight[key]
            self._expired.add(key)
            lost += 1
            self._log.debug("lost", seq=sent.seq)
        if lost:
            self._msg.lost.inc(lost)
            self._metrics.set_success(False)
            if not self._inflight:
                self._idle.set()

    # -- one-shot -------------------------------------------------------------------------------

    async def once(self) -> bool:
        """Connect, send one message, wait for its reply or timeout, close. True if answered."""
        try:
            session = await self.supervisor.connect()
        except ConnectError as exc:
            self._log.error("connect failed", reason=exc.reason, phase=exc.phase, detail=exc.detail)
            return False
        self._log.info(
            "connected",
            **{f"{k}_ms": round(v * 1e3, 2) for k, v in self.supervisor.phases.items()},
        )
        reader = asyncio.create_task(self.serve(session))
        try:
            key = await self.send(session)
            try:
                async with asyncio.timeout(self._cfg.timeout):
                    await self._idle.wait()
            except TimeoutError:
                pass
            answered = key in self._answered
            if not answered:
                self._log.error("no reply", timeout_s=self._cfg.timeout)
            return answered
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await session.ws.close()
