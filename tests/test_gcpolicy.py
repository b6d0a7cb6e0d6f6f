"""Frozen heap: full collections skip it, and a refreeze still reclaims its cyclic garbage."""

from __future__ import annotations

import gc
import weakref

from probed.gcpolicy import refreeze


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
