"""Delivery tracking rules without sockets: a fake clock in integer nanoseconds."""

from __future__ import annotations

import asyncio

from probed.delivery import REMEMBERED, DeliveryTracker, Outcome, open_loop

MS = 1_000_000


def test_an_answer_in_time_is_a_latency_and_empties_the_flight() -> None:
    t = DeliveryTracker(timeout_ns=100 * MS)
    t.sent("a", 0, now_ns=0)
    assert not t.idle.is_set() and len(t) == 1
    got = t.received("a", at_ns=7 * MS)
    assert got.outcome is Outcome.ANSWERED and got.sent is not None
    assert got.sent.sent_ns == 0 and not got.reordered
    assert t.idle.is_set() and t.was_answered("a")


def test_duplicates_late_and_unknown_replies_are_told_apart() -> None:
    t = DeliveryTracker(timeout_ns=100 * MS)
    t.sent("a", 0, now_ns=0)
    t.sent("b", 1, now_ns=10 * MS)
    assert t.received("a", 5 * MS).outcome is Outcome.ANSWERED
    assert t.received("a", 6 * MS).outcome is Outcome.DUPLICATE
    assert [s.seq for s in t.expire(now_ns=111 * MS)] == [1]
    late = t.received("b", 120 * MS)
    assert late.outcome is Outcome.LATE and not late.lost_now  # the sweep already counted it
    assert t.received("zzz", 1).outcome is Outcome.UNKNOWN


def test_a_reply_after_its_deadline_but_before_the_sweep_is_lost_now() -> None:
    t = DeliveryTracker(timeout_ns=100 * MS)
    t.sent("a", 0, now_ns=0)
    got = t.received("a", at_ns=101 * MS)
    assert got.outcome is Outcome.LATE and got.lost_now
    assert t.expire(now_ns=10**12) == []  # not counted twice
    assert t.received("a", 102 * MS).outcome is Outcome.LATE


def test_reordering_is_counted_within_an_epoch_only() -> None:
    t = DeliveryTracker(timeout_ns=100 * MS)
    for seq, key in enumerate("abc"):
        t.sent(key, seq, now_ns=seq * MS)
    assert not t.received("c", 5 * MS).reordered
    assert t.received("a", 6 * MS).reordered
    assert t.received("b", 7 * MS).reordered
    # A new session starts counting again: seq 0 after seq 2 is not reordering.
    t.start_epoch()
    t.sent("d", 0, now_ns=8 * MS)
    assert not t.received("d", 9 * MS).reordered


def test_a_dead_session_settles_everything_in_flight_as_lost() -> None:
    t = DeliveryTracker(timeout_ns=100 * MS)
    t.sent("a", 0, 0)
    t.sent("b", 1, 1)
    assert t.settle() == 2 and len(t) == 0 and t.idle.is_set()
    assert t.received("a", 2).outcome is Outcome.LATE


def test_memory_of_answered_keys_is_bounded_in_count() -> None:
    t = DeliveryTracker(timeout_ns=100 * MS)
    for n in range(REMEMBERED + 10):
        t.sent(str(n), n, n)
        t.received(str(n), n + 1)
    assert not t.was_answered("0") and t.was_answered(str(REMEMBERED + 9))


def test_next_deadline_is_the_oldest_message() -> None:
    t = DeliveryTracker(timeout_ns=100 * MS)
    assert t.next_deadline_ns() is None
    t.sent("a", 0, 5 * MS)
    t.sent("b", 1, 9 * MS)
    assert t.next_deadline_ns() == 105 * MS


async def test_open_loop_skips_slots_it_fell_behind_instead_of_bursting() -> None:
    # The fake clock answers each call in turn: the start, then "now" before each slot.
    readings = iter([100.0, 101.0, 102.0, 107.99])
    ticker = open_loop(1.0, clock=lambda: next(readings))
    slots = [await anext(ticker) for _ in range(3)]
    # Starved for five slots after slot 2: the next is the current slot, not a burst of six.
    assert slots == [1, 2, 8]
    await ticker.aclose()


async def test_open_loop_keeps_time_with_the_real_loop() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async for slot in open_loop(0.01):
        if slot == 5:
            break
    # Five slots of 10 ms: at least 50 ms (absolute deadlines never come early).
    assert loop.time() - start >= 0.049


def test_answered_keys_are_remembered_in_a_bounded_ring() -> None:
    tracker = DeliveryTracker(timeout_ns=1_000)
    total = REMEMBERED * 4
    for seq in range(total):
        tracker.sent(f"k{seq}", seq, seq)
        assert tracker.received(f"k{seq}", seq).outcome is Outcome.ANSWERED
    # The latest REMEMBERED are duplicates when they come again; older ones are unknown now.
    assert tracker.received(f"k{total - 1}", total).outcome is Outcome.DUPLICATE
    assert tracker.received(f"k{total - REMEMBERED}", total).outcome is Outcome.DUPLICATE
    assert tracker.received(f"k{total - REMEMBERED - 1}", total).outcome is Outcome.UNKNOWN
