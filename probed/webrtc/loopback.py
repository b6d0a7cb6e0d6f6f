"""Keep ICE on 127.0.0.1: for tests and the demo, where nothing may leave the machine.

aioice gathers host candidates from every interface except loopback. On a machine whose only
interface is loopback (a CI container) that leaves no candidate at all, and on any other machine
the media would use a real interface. Swapping aioice's address lister is process-wide, so it is
scoped to a block and restored after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aioice.ice


@contextlib.contextmanager
def loopback_candidates() -> Iterator[None]:
    original = aioice.ice.get_host_addresses

    def loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback_only
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original
