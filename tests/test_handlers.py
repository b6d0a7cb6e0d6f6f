"""Handlers that send and read at once, go-away with resumption, and cycles, on a real target.

Speech and voice probes stream audio while they read transcripts: their `serve` runs a sender and
a reader in a TaskGroup. Whatever ends the session inside that group must be classified as
itself, and a handler bug must end only that session, never the probe.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from probed import logs
from probed.config import EchoProbeConfig
from probed.connection import GoAway, Session, Supervisor
from probed.metrics import ProbeMetrics
from probed.targets.echo import EchoTarget
from tests.conftest import config, wait_until


@dataclass
class Streamer:
    """Sends a numbered message every 20 ms while a reader consumes the echoes."""

    fail_on: str | None = None  # "go_away" or "crash": what the reader does on the 3rd echo
    cycle_after: int | None = None  # return from serve after this many echoes
    setups: list[str | None] = field(default_factory=list)
    ended_reasons: list[str] = field(default_factory=list)
    drained: int = 0
    serve_started: list[float] = field(default_factory=list)

    async def setup(self, session: Session) -> None:
        self.setups.append(session.resume_handle)

    async def serve(self, session: Session) -> None:
        self.serve_started.append(time.monotonic())
        async with asyncio.TaskGroup() as tg:
            sender = tg.create_task(self._send(session))
            tg.create_task(self._read(session)).add_done_callback(lambda _t: sender.cancel())

    async def _send(self, session: Session) -> None:
        n = 0
        while True:
            n += 1
            await session.send(f"m{n}")
            await asyncio.sleep(0.02)

    async def _read(self, session: Session) -> None:
        seen = 0
        while True:
            await session.recv()
            seen += 1
            session.resume_handle = f"handle-{session.epoch}-{seen}"
            if seen == 3 and session.epoch == 1:
                if self.fail_on == "go_away":
                    raise GoAway()
                if self.fail_on == "crash":
                    raise RuntimeError("a handler bug")
            if self.cycle_after is not None and seen >= self.cycle_after:
                return

    async def drain(self, session: Session) -> None:
        self.drained += 1

    def ended(self, session: Session, reason: str) -> None:
        self.ended_reasons.append(reason)


@pytest.fixture
async def echo_target() -> AsyncIterator[EchoTarget]:
    async with EchoTarget() as target:
        yield target


def endpoint(url: str, reconnect: str = "{initial: 2s, max: 2s}") -> EchoProbeConfig:
    cfg = config(
        f"""
probes:
  - name: h
    kind: echo
    url: {url}
    connection: {{reconnect: {reconnect}, keepalive: off}}
"""
    ).probes[0]
    assert isinstance(cfg, EchoProbeConfig)
    return cfg


async def supervise(
    handler: Streamer, url: str, *, cycle: float | None = None, reconnect: str | None = None
) -> tuple[asyncio.Task[None], ProbeMetrics]:
    metrics = ProbeMetrics("h", kind="test", target=url)
    cfg = endpoint(url) if reconnect is None else endpoint(url, reconnect)
    sup = Supervisor(
        cfg, metrics=metrics.session(), handler=handler, log=logs.get(probe="h"), cycle=cycle
    )
    return asyncio.create_task(sup.run()), metrics


def count(metrics: ProbeMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_server_close_inside_the_group_is_a_server_close(
    echo_target: EchoTarget,
) -> None:
    handler = Streamer()
    task, metrics = await supervise(handler, echo_target.url)
    try:
        await wait_until(lambda: metrics.status.up and echo_target.sessions == 1)
        echo_target.close_all(4000, "room closed")
        await wait_until(lambda: handler.ended_reasons == ["server_close"])
        assert count(metrics, "probe_close_codes_total", code="4000") == 1
        assert count(metrics, "probe_disconnects_total", reason="shutdown") == 0
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_go_away_inside_the_group_drains_and_resumes_at_once(
    echo_target: EchoTarget,
) -> None:
    handler = Streamer(fail_on="go_away")
    task, metrics = await supervise(handler, echo_target.url)  # backoff floor 2 s
    try:
        await wait_until(lambda: len(handler.setups) == 2, within=5)
        assert handler.ended_reasons == ["go_away"] and handler.drained == 1
        # The latest handle the handler saw is carried into the next session's setup.
        assert handler.setups == [None, "handle-1-3"]
        # Reconnected at once, not after the 2 s backoff floor, and timed from the go-away.
        assert count(metrics, "probe_reconnect_duration_seconds_count") == 1
        assert count(metrics, "probe_reconnect_duration_seconds_sum") < 1.0
        assert count(metrics, "probe_disconnects_total", reason="go_away") == 1
        assert metrics.status.success is not False
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_crash_inside_the_group_ends_the_session_not_the_probe(
    echo_target: EchoTarget,
) -> None:
    handler = Streamer(fail_on="crash")
    task, metrics = await supervise(
        handler, echo_target.url, reconnect="{initial: 100ms, max: 100ms}"
    )
    try:
        await wait_until(lambda: len(handler.setups) == 2, within=5)
        assert handler.ended_reasons == ["error"]
        assert count(metrics, "probe_disconnects_total", reason="error") == 1
        assert metrics.status.success is False
        await wait_until(lambda: 1011 in echo_target.close_codes)
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_cycles_start_on_the_interval_not_in_a_tight_loop(echo_target: EchoTarget) -> None:
    handler = Streamer(cycle_after=2)
    task, metrics = await supervise(handler, echo_target.url, cycle=0.4)
    try:
        await wait_until(lambda: len(handler.serve_started) >= 4, within=10)
        gaps = [b - a for a, b in itertools.pairwise(handler.serve_started)]
        # Each cycle waits for its slot: never back to back (a cycle itself takes ~60 ms).
        assert all(gap >= 0.3 for gap in gaps), gaps
        assert set(handler.ended_reasons) == {"cycle"}
        assert count(metrics, "probe_disconnects_total", reason="cycle") >= 3
        # A planned cycle is not a reconnect.
        assert count(metrics, "probe_reconnect_duration_seconds_count") == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
