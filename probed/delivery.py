"""Delivery tracking, free of sockets and metrics: what is in flight, what came back, what is lost.

Shared by every kind that sends messages and waits for them (echo replies, fan-out deliveries).
Time comes in as integer nanoseconds from the caller, so the rules are unit-tested with a fake
clock. The open-loop ticker decides when messages leave.
"""

from __future__ import annotations

import asyncio
from array import array
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final, NamedTuple

# How many answered / expired keys to remember for telling duplicates and late replies apart:
# minutes of messages at one a second, well past any timeout. A reply older than that is
# counted unmatched as "unknown" rather than "late" or a duplicate.
REMEMBERED: Final = 256


class Outcome(Enum):
    ANSWERED = "answered"  # in time: a latency
    LATE = "late"  # after its deadline (already lost, or lost now)
    DUPLICATE = "duplicate"  # answered before
    UNKNOWN = "unknown"  # never sent by this tracker (another prober, a previous run)


class Sent(NamedTuple):
    # A named tuple: made for every message, cheaper to build than a frozen dataclass.
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
    """The latest REMEMBERED keys, as hashes in a ring of machine integers.

    Held per session for as long as the probe runs: 2 KB, where a dict of the keys themselves
    grew to about 600 KB per session within an hour (4,096 keys). Adding is O(1); asking, which
    only a reply that is no longer in flight does, scans the ring in C. A hash collision could
    call an unknown reply late or a duplicate: at 64 bits, never in practice.
    """

    __slots__ = ("_hashes", "_next")

    def __init__(self) -> None:
        self._hashes = array("q")
        self._next = 0

    def add(self, key: str) -> None:
        if len(self._hashes) < REMEMBERED:
            self._hashes.append(hash(key))
        else:
            self._hashes[self._next] = hash(key)
            self._next = (self._next + 1) % REMEMBERED

    def __contains__(self, key: str) -> bool:
        return hash(key) in self._hashes


class DeliveryTracker:
    """In-flight messages of one receiver, with loss, duplicate, reorder and late-reply rules.

    `start_epoch` begins a new session: sequence order restarts, so a reconnect is never counted
    as reordering; `settle` declares whatever is in flight lost when its session died.
    """

    def __init__(self, timeout_ns: int) -> None:
        self.timeout_ns = timeout_ns
        self._inflight: OrderedDict[str, Sent] = OrderedDict()
        self._answered = _Remembered()
        self._expired = _Remembered()
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
            self._expired.add(key)
            return Received(Outcome.LATE, sent, lost_now=True)
        self._answered.add(key)
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
            self._expired.add(key)
            lost.append(sent)
        if lost and not self._inflight:
            self.idle.set()
        return lost

    def settle(self) -> int:
        """The session died: everything in flight is lost. Returns how many."""
        count = len(self._inflight)
        for key in self._inflight:
            self._expired.add(key)
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
