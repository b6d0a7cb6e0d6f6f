"""What lets one process hold ten thousand sessions: bounded dialling, and a cheap heap freeze."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest
import uvloop

from probed import dial
from probed.config import EchoProbeConfig
from probed.dial import ConnectError, Dialer, DialSlots, TimedConnection, dial_slots
from probed.gcpolicy import freeze_young
from probed.status import Recent
from probed.targets.echo import EchoTarget
from tests.conftest import config


def endpoint(url: str, connect_timeout: str = "2s") -> EchoProbeConfig:
    cfg = config(
        f"""
probes:
  - name: p
    kind: echo
    url: {url}
    connection: {{connect_timeout: {connect_timeout}}}
"""
    ).probes[0]
    assert isinstance(cfg, EchoProbeConfig)
    return cfg


async def silent_server() -> tuple[asyncio.Server, str]:
    """Accepts TCP and never answers the upgrade: a dial to it holds its slot to the deadline."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://127.0.0.1:{port}/"


async def test_dials_queue_for_a_slot_and_the_wait_is_no_phase(
    echo: EchoTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dial, "MAX_CONCURRENT_DIALS", 1)
    server, silent_url = await silent_server()
    try:
        stuck = asyncio.create_task(Dialer(endpoint(silent_url, "500ms")).dial())
        await asyncio.sleep(0)  # the stuck dial takes the only slot first
        queued = Dialer(endpoint(echo.url))
        started = time.perf_counter()
        conn = await queued.dial()
        waited = time.perf_counter() - started
        with pytest.raises(ConnectError) as failed:
            await stuck
        assert failed.value.reason == "timeout"
        # It connected only once the stuck dial gave its slot up at its deadline...
        assert waited >= 0.4
        # ...and its phases time the target, not the queue.
        assert sum(queued.phases.values()) < waited - 0.3
        await conn.close()
    finally:
        server.close()


async def test_each_loop_has_its_own_dial_bound() -> None:
    slots = dial_slots()
    assert slots is dial_slots()
    elsewhere = await asyncio.to_thread(lambda: asyncio.run(_slots_of_a_new_loop()))
    assert elsewhere is not slots


async def _slots_of_a_new_loop() -> DialSlots:
    return dial_slots()


async def test_slots_go_first_come_first_served_and_survive_cancelled_waiters() -> None:
    slots = DialSlots(1)
    order: list[str] = []

    async def dial(name: str) -> None:
        async with slots:
            order.append(name)

    await slots.__aenter__()  # a dial in flight holds the only slot
    waiters = {name: asyncio.create_task(dial(name)) for name in ("a", "b", "c", "d")}
    await asyncio.sleep(0)  # all four queue, in order
    waiters["a"].cancel()  # gave up while queued
    await slots.__aexit__(None, None, None)  # the slot is handed to "b", which has not run yet
    waiters["b"].cancel()  # cancelled then, it must pass the slot on
    await asyncio.gather(*waiters.values(), return_exceptions=True)
    assert order == ["c", "d"]
    assert waiters["a"].cancelled() and waiters["b"].cancelled()
    # Every slot came back: a new dial goes straight in.
    async with asyncio.timeout(1):
        await dial("e")
    assert order == ["c", "d", "e"]


async def test_a_loop_too_late_for_the_deadline_fails_the_dial_cleanly(
    echo: EchoTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop stalls (a saturated loop, a herd of dials) just as the transport is made, past
    # the upgrade's deadline: the dial must fail as a timeout, not raise inside asyncio's
    # connection_made callback and leave the connection half made.
    made = TimedConnection.__init__

    def stalled(self: TimedConnection, *args: Any, **kwargs: Any) -> None:
        time.sleep(0.05)
        made(self, *args, **kwargs)

    monkeypatch.setattr(TimedConnection, "__init__", stalled)
    errors: list[dict[str, Any]] = []

    async def dial_on_uvloop() -> ConnectError | None:
        # uvloop runs due timers before the connection_made queued in the stalled iteration,
        # as the daemon's loop does; asyncio's own loop runs them the other way round.
        asyncio.get_running_loop().set_exception_handler(lambda _loop, c: errors.append(c))
        try:
            conn = await Dialer(endpoint(echo.url, "20ms")).dial()
        except ConnectError as exc:
            return exc
        await conn.close()
        return None

    failed = await asyncio.to_thread(uvloop.run, dial_on_uvloop())
    assert failed is not None and failed.reason == "timeout"
    assert not errors, errors


def test_freeze_young_freezes_without_a_full_collection() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    try:
        gc.unfreeze()
        gc.collect()
        full_before = gc.get_stats()[2]["collections"]
        kept = [Node() for _ in range(1000)]
        freeze_young()
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_stats()[2]["collections"] == full_before, "a full pass ran"
    finally:
        gc.unfreeze()


def test_recent_keeps_the_latest_values_oldest_first() -> None:
    recent = Recent(3)
    assert not recent and len(recent) == 0
    for value in (1.0, 2.0, 3.0, 4.0, 5.0):
        recent.append(value)
    assert list(recent) == [3.0, 4.0, 5.0]
    assert (recent[0], recent[-1], len(recent)) == (3.0, 5.0, 3)
    with pytest.raises(IndexError):
        recent[3]
    recent.clear()
    assert list(recent) == [] and not recent
