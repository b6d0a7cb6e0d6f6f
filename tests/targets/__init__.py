"""Tests for the reference targets, over real sockets on ephemeral ports."""

import asyncio
from collections.abc import Callable


async def eventually(condition: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Poll until condition() holds; the generous limit is for slow, noisy CI machines."""
    try:
        async with asyncio.timeout(within):
            # The conditions are plain counters of the code under test, with no event to await.
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {within}s waiting for {what}") from None
