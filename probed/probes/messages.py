"""Message families shared by the kinds that send messages and time their delivery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Final

from websockets.exceptions import ConnectionClosed

from probed.connection import Session, Supervisor
from probed.delivery import Outcome, Received, open_loop
from probed.metrics import Latency, ProbeMetrics
from probed.template import Template

# Would-be replies that match no message in flight, or cannot be read as one.
UNMATCHED_REASONS: Final = (
    "not_json",
    "too_large",
    "too_deep",
    "missing_field",
    "bad_id",
    "late",
    "unknown",
)
# Inbound messages that are not replies by the configured filter: counted, never a failure.
IGNORED_REASONS: Final = ("filtered", "foreign")


class MessageMetrics:
    """sent / received / lost / duplicated / reordered / unmatched, and one latency family."""

    def __init__(self, metrics: ProbeMetrics, latency: Latency, *, answer: str = "reply") -> None:
        self._status = metrics.status
        self._answer = answer  # what an answered message is called in the status timeline
        self.latency = latency
        self._sent = metrics.counter("probe_messages_sent_total", "Messages sent.")
        self._received = metrics.counter(
            "probe_messages_received_total", "Replies matched to a message in time."
        )
        self._lost = metrics.counter(
            "probe_messages_lost_total",
            "Messages unanswered within the timeout, or in flight when their session died.",
        )
        self._duplicated = metrics.counter(
            "probe_messages_duplicated_total", "Replies received more than once."
        )
        self._reordered = metrics.counter(
            "probe_messages_reordered_total",
            "Replies that arrived after a reply to a later message.",
        )
        self._unmatched = metrics.counter(
            "probe_messages_unmatched_total",
            "Inbound messages that matched no message in flight, by reason.",
            "reason",
            UNMATCHED_REASONS,
        )
        self._ignored = metrics.counter(
            "probe_messages_ignored_total",
            "Inbound messages that are not replies by the configured filter, by reason.",
            "reason",
            IGNORED_REASONS,
        )

    def sent(self) -> None:
        self._sent.inc()
        self._status.sent += 1

    def lost(self, count: int = 1, why: str = "no reply within timeout") -> None:
        if count:
            self._lost.inc(count)
            self._status.lost += count
            self._status.failed("lost", f"{count} message(s): {why}")

    def unmatched(self, reason: str) -> None:
        self._unmatched.labels(reason).inc()
        self._status.failed("unmatched", reason)

    def ignored(self, reason: str) -> None:
        self._ignored.labels(reason).inc()

    def record(self, got: Received, at_ns: int) -> bool:
        """Count one inbound message's outcome; True if it answered a message in time."""
        if got.outcome is Outcome.ANSWERED:
            assert got.sent is not None
            self._received.inc()
            if got.reordered:
                self._reordered.inc()
            self.latency.observe(got.sent.sent_ns, at_ns)
            self._status.measured(
                self._answer,
                (at_ns - got.sent.sent_ns) / 1e9,
                f"seq {got.sent.seq}" + (" (reordered)" if got.reordered else ""),
            )
            return True
        if got.outcome is Outcome.DUPLICATE:
            self._duplicated.inc()
            self._status.failed("duplicate", f"seq {got.sent.seq}" if got.sent else "")
        elif got.outcome is Outcome.LATE:
            if got.lost_now:
                self.lost()
            self.unmatched("late")
        else:
            self.unmatched("unknown")
        return False


async def send_open_loop(
    interval: float,
    send_timeout: float,
    supervisor: Supervisor,
    send: Callable[[Session], Awaitable[object]],
) -> None:
    """Send on the fixed schedule whenever the supervisor's session is up and not draining.

    A peer that stopped reading must not stop the schedule: the message stays in flight (and
    counts as lost) while the next slot comes round; the supervisor classifies the session.
    """
    async for _slot in open_loop(interval):
        session = supervisor.session
        if session is None or session.draining:
            continue
        try:
            async with asyncio.timeout(send_timeout):
                await send(session)
        except (ConnectionClosed, TimeoutError):
            continue


def render_message(template: Template, session: Session, ident: str, seq: int, probe: str) -> str:
    """A message from its template: the session's captured values plus the built-ins."""
    return template.render(
        {
            **session.variables,
            "id": ident,
            "seq": str(seq),
            "send_time": f"{time.time():.6f}",
            "probe": probe,
        }
    )
