"""The taint rule: a stall longer than the threshold never passes into a histogram unflagged."""

from __future__ import annotations

import asyncio
import random
import time

from probed.selfmon import FINE_FROM_PROBES, LagMonitor


async def test_every_stall_longer_than_the_threshold_taints_the_measurements_across_it() -> None:
    monitor = LagMonitor(0.02)
    sampler = asyncio.create_task(monitor.run())
    try:
        for _ in range(8):
            # Stalls start at any phase of the sampler's sleep: none may slip between wake-ups.
            await asyncio.sleep(random.uniform(0.0, 0.03))
            start = time.perf_counter_ns()
            time.sleep(0.025)  # noqa: ASYNC251 - a 25 ms stall against a 20 ms threshold
            end = time.perf_counter_ns()
            await asyncio.sleep(0.03)  # the sampler wakes, late, and records the episode
            assert monitor.tainted(start + 1_000_000, end), "a 25 ms stall went unflagged"
    finally:
        sampler.cancel()


def test_the_sampler_wakes_at_half_the_threshold_or_a_fifth_for_a_large_fleet() -> None:
    assert LagMonitor(0.005).interval == 0.0025
    assert LagMonitor(1.0).interval == 0.05  # a long threshold still samples often
    assert LagMonitor(0.05, interval=0.01).interval == 0.01
    large = LagMonitor(0.005)
    large.probes = FINE_FROM_PROBES
    assert large.interval == 0.001
    large.threshold = 0.002
    assert large.interval == 0.001  # no finer than a timer honours


async def test_a_fine_sampler_still_flags_every_stall_over_the_threshold() -> None:
    monitor = LagMonitor(0.02)
    monitor.probes = FINE_FROM_PROBES
    sampler = asyncio.create_task(monitor.run())
    try:
        await asyncio.sleep(0.05)
        start, end = await stall(monitor, 0.025)
        assert monitor.tainted(start + 1_000_000, end), "a 25 ms stall went unflagged"
    finally:
        sampler.cancel()


async def stall(monitor: LagMonitor, seconds: float) -> tuple[int, int]:
    """Block the loop, then let the sampler wake (late) and record the episode."""
    start = time.perf_counter_ns()
    time.sleep(seconds)  # noqa: ASYNC251 - the stall under test
    end = time.perf_counter_ns()
    await asyncio.sleep(3 * monitor.interval)
    return start, end


async def test_a_long_measurement_absorbs_a_stall_below_one_percent_of_it() -> None:
    monitor = LagMonitor(0.02)
    sampler = asyncio.create_task(monitor.run())
    try:
        await asyncio.sleep(0.05)
        start, end = await stall(monitor, 0.025)
        # The same 25 ms stall at the end of a 50 ms, a 2 s and a 10 s measurement: it can have
        # added half, 1.25% and 0.25% of it.
        assert monitor.tainted(end - 50_000_000, end)
        assert monitor.tainted(end - 2_000_000_000, end)
        assert not monitor.tainted(end - 10_000_000_000, end)
        # Stalls add up: five of them are more than 1% of the 10 s they fall in.
        for _ in range(4):
            _, end = await stall(monitor, 0.025)
        assert monitor.tainted(start - 9_000_000_000, end)
    finally:
        sampler.cancel()
