"""The taint rule: a stall longer than the threshold never passes into a histogram unflagged."""

from __future__ import annotations

import asyncio
import random
import time

from probed.selfmon import LagMonitor


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


def test_the_sampler_wakes_at_half_the_threshold() -> None:
    assert LagMonitor(0.005).interval == 0.0025
    assert LagMonitor(1.0).interval == 0.05  # a long threshold still samples often
    assert LagMonitor(0.05, interval=0.01).interval == 0.01
