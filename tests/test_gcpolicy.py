"""Frozen heap: full collections skip it, and a refreeze still reclaims its cyclic garbage."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from probed import gcpolicy
from probed.gcpolicy import refreeze
from tests.conftest import wait_until


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector can free it


def test_refreeze_reclaims_garbage_that_the_freeze_kept() -> None:
    try:
        node = Node()
        alive = weakref.ref(node)
        refreeze()
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert alive() is not None, "a frozen cycle is out of the collector's reach"
        refreeze()
        assert alive() is None, "the periodic refreeze reclaims it"
    finally:
        gc.unfreeze()


async def test_no_automatic_collection_while_the_fleet_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gcpolicy, "SETTLING_S", 0.0)
    monkeypatch.setattr(gcpolicy, "STARTING_FREEZE_S", 0.01)
    monkeypatch.setattr(gcpolicy, "STARTING_FREEZE_MIN_OBJECTS", 0)
    try:
        gcpolicy.starting()
        assert not gc.isenabled()
        task = asyncio.create_task(gcpolicy.freeze_when_settled(1.5))
        await wait_until(lambda: gc.get_freeze_count() > 0, what="young survivors frozen")
        assert not gc.isenabled(), "collection came back before the probes settled"
        await wait_until(gc.isenabled, what="automatic collection back after settling")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        # Stopped while starting (the daemon stops early): collection is back on all the same.
        gcpolicy.starting()
        task = asyncio.create_task(gcpolicy.freeze_when_settled(60))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()


def test_a_reload_allocates_without_collections_and_freezes_what_it_kept() -> None:
    passes: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            passes.append(info["generation"])

    gc.callbacks.append(count)
    try:
        assert gc.isenabled()
        with gcpolicy.held_off():
            # Far past the young generation's threshold: automatic passes would have run.
            kept = [Node() for _ in range(50 * gc.get_threshold()[0])]
            assert not gc.isenabled()
        assert passes == [], "a collection ran while a reload allocated"
        assert gc.isenabled(), "automatic collection is back after the reload"
        assert gc.get_freeze_count() >= len(kept), "what the reload kept is frozen"
        # Held off while collection was already off (the fleet still settling): it stays off.
        gc.disable()
        with gcpolicy.held_off():
            pass
        assert not gc.isenabled()
    finally:
        gc.callbacks.remove(count)
        gc.enable()
        gc.unfreeze()


def test_the_young_threshold_grows_with_the_fleet_and_no_further() -> None:
    # A small daemon keeps CPython's short young passes: a long one taints its measurements.
    assert gcpolicy.steady_thresholds(2)[0] == 700
    assert gcpolicy.steady_thresholds(1_000)[0] == 5_000
    assert gcpolicy.steady_thresholds(10_000)[0] == 50_000
    assert gcpolicy.steady_thresholds(100_000)[0] == 50_000
