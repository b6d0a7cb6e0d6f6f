"""Keep the garbage collector's full passes off the measurements.

With a thousand sessions the heap holds millions of objects, and each full (generation 2)
collection walks all of them: 80-350 ms with the loop stopped, measured on 1,000 probes, a couple
of times a minute. Nearly all of those objects live as long as the daemon (modules, configs,
metric families, held sessions), so once the probes have settled they are frozen out of the
collector's view (`gc.freeze`), and full passes only walk what came later.

While the probes start, the heap grows from nothing to millions of objects, and the collector's
automatic passes walk all of it: at 10,000 probes, 13 full passes took 3.2 s (the longest 0.7 s)
in the first 4.6 s, and the fleet was not half up after 15 s. So the daemon turns automatic
collection off before it starts its probes (`starting`), and until they have settled, every
`STARTING_FREEZE_S`, the young generations are collected and what survives is frozen: cheap at
any heap size (gc.freeze only moves lists). Then automatic collection is back on, over a heap
that is almost all frozen.

A reload is the same burst on a smaller scale: parsing 1,000 probes allocates hundreds of thousands
of objects, and the automatic passes they trigger (in the parsing thread, holding the GIL) held the
loop for 80-95 ms. So a reload runs `held_off`: no automatic collection while it parses and
applies, and what survives is frozen at the end.

Objects frozen while alive that later become cyclic garbage (the session objects of a probe that
reconnects) are not reclaimed while frozen, so every `REFREEZE_S` the heap is unfrozen, collected
once and frozen again: one pause an hour, not two a minute. The lag sampler sees that pause like
any other, so measurements across it are tainted, not inflated.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from probed import logs

REFREEZE_S: Final = 3600.0
# How long after the probes' start stagger the heap keeps being frozen as it grows: this catches
# fleets whose sessions are still dialling (3,000 probes took 34 s to be all up on a loaded
# 2-core machine).
SETTLING_S: Final = 30.0
# While the fleet starts and settles: how often the young survivors are frozen, once there are
# this many. A small fleet never gets there: no pause at all while it settles (each pause may
# taint the measurements it overlaps), where a fleet of thousands freezes every second.
STARTING_FREEZE_S: Final = 1.0
STARTING_FREEZE_MIN_OBJECTS: Final = 100_000
# Once settled: a young collection after a number of net new container objects that grows with
# the fleet, from CPython's 700 up to 50,000 at 10,000 probes. A held fleet's messages in flight
# are young objects that die within a round trip; with the default threshold the collector
# walked them again and again, and promoted them into older generations that full passes then
# walked: at 10,000 sessions, 1,841 passes took 4.8 s of every 20 (the longest 212 ms), a
# quarter of probed's CPU; at 50,000: 2 passes, 0.18 s. But a pass is as long as its threshold
# is large, and a small fleet has no such traffic: at 50,000 a two-probe daemon paused long
# enough, now and then, to taint its round trips until ProbedMeasurementsTainted fired and held
# its SLO pages back (the alerting end-to-end test). Cyclic garbage still adds to the count, so
# it is still collected; the hourly refreeze is unchanged.
_YOUNG_PER_PROBE: Final = 5
_YOUNG_RANGE: Final = (700, 50_000)


def steady_thresholds(probes: int) -> tuple[int, int, int]:
    low, high = _YOUNG_RANGE
    return (min(high, max(low, _YOUNG_PER_PROBE * probes)), 10, 10)


def refreeze() -> float:
    """Collect everything, then freeze what survives; returns the pause in seconds."""
    start = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - start


def starting() -> float:
    """The probes are about to be started: no automatic collection until they settle.

    What start-up left behind (the parsed config's garbage) is collected first, while the heap
    is still small, and what lives on is frozen. `freeze_when_settled` collects the young
    generations meanwhile and turns automatic collection back on. Returns the pause in seconds.
    """
    pause = refreeze()
    gc.disable()
    return pause


@contextmanager
def held_off() -> Iterator[None]:
    """No automatic collection inside; what survives it is frozen, so no later pass walks it.

    Garbage left in cycles is frozen with it and reclaimed at the next `refreeze`; acyclic
    garbage (nearly all of a parse's) is freed by reference counting as usual.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def installed() -> None:
    """The probes' recorders are built: freeze them without a collection.

    What was just built (metric families, series, status) lives as long as its probe, so there
    is nothing to collect; at 10,000 probes it is two million objects, which the first
    `freeze_young` would otherwise walk with the loop stopped (about 0.35 s) while the fleet dials.
    """
    gc.freeze()


def freeze_young() -> float:
    """Collect the young generations only, then freeze everything; returns the pause in seconds.

    What survived into the old generation unreferenced stays until the next `refreeze`.
    """
    start = time.perf_counter()
    gc.collect(1)
    gc.freeze()
    return time.perf_counter() - start


async def freeze_when_settled(
    settle_s: float, probes: int = 0, every_s: float = REFREEZE_S
) -> None:
    """Freeze the young survivors every second until `settle_s` (the probes' start stagger and
    first dials) plus `SETTLING_S` have passed; then turn automatic collection back on with
    `steady_thresholds(probes)` (the previous ones come back when this ends), and collect fully
    and refreeze every `every_s`.

    No full collection runs while the fleet starts: at 10,000 sessions one takes seconds.
    """
    log = logs.get(component="gc")
    loop = asyncio.get_running_loop()
    until = loop.time() + settle_s + SETTLING_S
    # The probes' tasks were created before this one, so their first steps (building each probe:
    # 1.3 million objects at 10,000 probes, all alive as long as their probe) have run: frozen
    # as they are, where the first pass below walked them for 1.1 s while the fleet dialled and
    # found no garbage.
    gc.freeze()
    # While the start stagger runs, the heap is all dials in flight: their survivors are frozen
    # as they are (at 10,000 probes each collection pass there walked a million objects for
    # 0.2-0.6 s and found none unreachable). Cyclic garbage made in those seconds waits for the
    # hourly refreeze; after them, each pass collects first.
    dialling_until = loop.time() + settle_s
    try:
        while loop.time() < until:
            await asyncio.sleep(min(STARTING_FREEZE_S, max(0.0, until - loop.time())))
            young, older, _old = gc.get_count()
            if young + older < STARTING_FREEZE_MIN_OBJECTS:
                continue
            if loop.time() < dialling_until:
                gc.freeze()
            else:
                freeze_young()
    finally:
        gc.enable()
    log.info("heap frozen", objects=gc.get_freeze_count())
    thresholds = gc.get_threshold()
    gc.set_threshold(*steady_thresholds(probes))
    try:
        while True:
            await asyncio.sleep(every_s)
            pause = refreeze()
            log.info("heap refrozen", objects=gc.get_freeze_count(), pause_ms=round(pause * 1e3, 1))
    finally:
        gc.set_threshold(*thresholds)
