"""Work in a thread shortens the GIL switch interval while it runs, and puts it back after."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading

from probed.offloop import SWITCH_INTERVAL_S, in_thread


async def test_the_switch_interval_is_short_while_work_runs_and_restored_after() -> None:
    before = sys.getswitchinterval()
    seen: list[float] = []
    both_running = asyncio.Event()
    release = threading.Event()
    loop = asyncio.get_running_loop()

    def work(n: int) -> int:
        seen.append(sys.getswitchinterval())
        if len(seen) == 2:
            loop.call_soon_threadsafe(both_running.set)
        release.wait(10)
        return n * 2

    first = asyncio.create_task(in_thread(work, 1))
    second = asyncio.create_task(in_thread(work, 2))
    await asyncio.wait_for(both_running.wait(), 10)
    release.set()
    assert [await first, await second] == [2, 4]
    assert seen == [SWITCH_INTERVAL_S, SWITCH_INTERVAL_S]
    # Overlapping jobs: restored once, by the last to finish.
    assert sys.getswitchinterval() == before


async def test_an_error_in_the_thread_still_restores_the_interval() -> None:
    before = sys.getswitchinterval()

    def fail() -> None:
        raise ValueError("bad config")

    with contextlib.suppress(ValueError):
        await in_thread(fail)
    assert sys.getswitchinterval() == before
