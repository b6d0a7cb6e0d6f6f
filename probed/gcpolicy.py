"""Keep the garbage collector's full passes off the measurements.

With a thousand sessions the heap holds millions of objects, and each full (generation 2)
collection walks all of them: 80-350 ms with the loop stopped, measured on 1,000 probes, a couple
of times a minute. Nearly all of those objects live as long as the daemon (modules, configs,
metric families, held sessions), so once the probes have settled they are frozen out of the
collector's view (`gc.freeze`), and full passes only walk what came later.

Objects frozen while alive that later become cyclic garbage (the session objects of a probe that
reconnects) are not reclaimed while frozen, so every `REFREEZE_S` the heap is unfrozen, collected
once and frozen again: one pause an hour, not two a minute. The lag sampler sees that pause like
any other, so measurements across it are tainted, not inflated.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Final

from probed import logs

REFREEZE_S: Final = 3600.0
# A second freeze this long after the first catches fleets whose sessions were still dialling
# (3,000 probes took 34 s to be all up on a loaded 2-core machine).
SECOND_FREEZE_S: Final = 30.0


def refreeze() -> float:
    """Collect everything, then freeze what survives; returns the pause in seconds."""
    start = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - start


async def freeze_when_settled(settle_s: float, every_s: float = REFREEZE_S) -> None:
    """After `settle_s` (the probes' start stagger and first dials), once more a little later,
    and then every `every_s`."""
    log = logs.get(component="gc")
    await asyncio.sleep(settle_s)
    wait = SECOND_FREEZE_S
    while True:
        pause = refreeze()
        log.info("heap frozen", objects=gc.get_freeze_count(), pause_ms=round(pause * 1e3, 1))
        await asyncio.sleep(wait)
        wait = every_s
