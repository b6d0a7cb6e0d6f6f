"""Delivery tracking, free of sockets and metrics: what is in flight, what came back, what is lost.

Shared by every kind that sends messages and waits for them (echo replies, fan-out deliveries).
Time comes in as integer nanoseconds from the caller, so the rules are unit-tested with a fake
clock. The open-loop ticker decides when messages leave.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

# Answered and expired keys are remembered, to tell duplicates and late replies from unknown
# ones, for twice the timeout but at least this long, and never more than REMEMBERED of them.
# A count alone was a slow leak: 4,096 keys per probe take an hour to fill at one message a
# second, and then weigh ~0.7 MB per probe for the rest of the daemon's life.
REMEMBER_AT_LEAST_NS: Final = 30 * 1_000_000_000
REMEMBERED: Final = 4096


class Outcome(Enum):
    ANSWERED = "answered"  # in time: a latency
    LATE = "late"  # after its deadline (already lost, or lost now)
    DUPLICATE = "duplicate"  # answered before
    UNKNOWN = "unknown"  # never sent by this tracker (another prober, a previous run)


@dataclass(frozen=True, slots=True)
class Sent:
    seq: int
    sent_ns: int
    deadline_ns: int


@dataclass(frozen=True, slots=True)
class Received:
    outcome: Outcome
    sent: Sent | None = None
    reordered: bool = False
    # A reply that beat the sweep but not the deadline: it is lost now, by this call.
    lost_now: bool = False


class _Remembered:
    """Keys added within the last `keep_ns`, at most REMEMBERED of them, oldest first."""

    __slots__ = ("_keep_ns", "_keys")

    def __init__(self, keep_ns: int) -> None:
        self._keep_ns = keep_ns
        self._keys: OrderedDict[str, int] = OrderedDict()

    def add(self, key: str, now_ns: int) -> None:
        keys = self._keys
        keys[key] = now_ns
        keys.move_to_end(key)
        horizon = now_ns - self._keep_ns
        # The key just added is newer than the horizon, so this stops before emptying.
        while len(keys) > REMEMBERED or next(iter(keys.values())) < horizon:
            keys.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)


class DeliveryTracker:
    """In-flight messages of one receiver, with loss, duplicate, reorder and late-reply rules.

    `start_epoch` begins a new session: sequence order restarts, so a reconnect is never counted
    as reordering; `settle` declares whatever is in flight lost when its session died.
    """

    def __init__(self, timeout_ns: int) -> None:
        self.timeout_ns = timeout_ns
        self._inflight: OrderedDict[str, Sent] = OrderedDict()
        keep_ns = max(2 * timeout_ns, REMEMBER_AT_LEAST_NS)
        self._answered = _Remembered(keep_ns)
        self._expired = _Remembered(keep_ns)
        self._highest = -1
        self.idle = asyncio.Event()
        self.idle.set()

    def __len__(self) -> int:
        return len(self._inflight)

    def start_epoch(self) -> None:
        self._highest = -1

    def sent(self, key: str, seq: int, now_ns: int) -> None:
        self._inflight[key] = Sent(seq, now_ns, now_ns + self.timeout_ns)
        self.idle.clear()

    def received(self, key: str, at_ns: int) -> Received:
        sent = self._inflight.pop(key, None)
        if sent is None:
            if key in self._answered:
                return Received(Outcome.DUPLICATE)
            if key in self._expired:
                return Received(Outcome.LATE)
            return Received(Outcome.UNKNOWN)
        if not self._inflight:
            self.idle.set()
        if at_ns > sent.deadline_ns:
            # Past its deadline but not yet swept: lost, exactly as if the sweep had come first.
            self._expired.add(key, at_ns)
            return Received(Outcome.LATE, sent, lost_now=True)
        self._answered.add(key, at_ns)
        reordered = sent.seq < self._highest
        self._highest = max(self._highest, sent.seq)
        return Received(Outcome.ANSWERED, sent, reordered)

    def was_answered(self, key: str) -> bool:
        return key in self._answered

    def next_deadline_ns(self) -> int | None:
        if not self._inflight:
            return None
        return next(iter(self._inflight.values())).deadline_ns

    def expire(self, now_ns: int) -> list[Sent]:
        """Remove and return every message whose deadline has passed."""
        lost: list[Sent] = []
        # Insertion order is send order, so expired entries are all at the front.
        while self._inflight:
            key, sent = next(iter(self._inflight.items()))
            if sent.deadline_ns > now_ns:
                break
            del self._inflight[key]
            self._expired.add(key, now_ns)
            lost.append(sent)
        if lost and not self._inflight:
            self.idle.set()
        return lost

    def settle(self, now_ns: int) -> int:
        """The session died: everything in flight is lost. Returns how many."""
        count = len(self._inflight)
        for key in self._inflight:
            self._expired.add(key, now_ns)
        self._inflight.clear()
        self.idle.set()
        return count


async def open_loop(
    interval: float, clock: Callable[[], float] | None = None
) -> AsyncGenerator[int, None]:
    """Yield slot numbers at start + n * interval, whatever the replies do (open loop).

    A consumer that falls more than a slot behind (the loop was starved) skips to the current
    slot instead of bursting the missed ones: a burst would measure the probe, not the service.
    """
    now = clock or asyncio.get_running_loop().time
    start = now()
    slot = 0
    while True:
        slot += 1
        due = start + slot * interval
        current = now()
        if current - due > interval:
            slot = int((current - start) / interval) + 1
            due = start + slot * interval
        await asyncio.sleep(due - current)
        yield slot
