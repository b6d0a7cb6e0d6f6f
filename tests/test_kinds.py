"""The probe-kind seam: a kind that only this test knows runs, reloads, exports and shows status.

The kind is registered through probed.kinds like the built-in ones; no product file names it.
It holds several supervised sessions with roles (a publisher and subscribers, like fan-out), so
the shared session families are checked with more than one session per probe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest
import structlog

from probed import kinds
from probed.config import ProbeConfig, WebSocketEndpoint, load_config
from probed.connection import AppTimeout, Session, Supervisor
from probed.metrics import ProbeMetrics
from probed.targets.echo import EchoTarget
from tests.conftest import RunningDaemon, config, wait_until

StartDaemon = Callable[..., Awaitable[RunningDaemon]]


class RoomProbeConfig(WebSocketEndpoint, ProbeConfig):
    kind: Literal["room_test"]
    subscribers: int = 2

    def slo_thresholds(self) -> tuple[float, ...]:
        return (0.033,)


class RoomProbe:
    """One publisher and N subscribers on the echo target; each session sends one hello."""

    drop: asyncio.Event
    dropped = 0

    def __init__(
        self, cfg: ProbeConfig, metrics: ProbeMetrics, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        assert isinstance(cfg, RoomProbeConfig)
        self._hellos = metrics.counter("probe_room_hellos_total", "Hellos echoed, by role.")
        self._latency = metrics.latency("probe_room_hello_seconds", "Hello round trip.")
        self._supervisors = [
            Supervisor(cfg, metrics=metrics.session(role), handler=self, log=log)
            for role in ["publisher"] + ["subscriber"] * cfg.subscribers
        ]

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for sup in self._supervisors:
                tg.create_task(sup.run())

    async def once(self) -> bool:
        return True

    async def setup(self, session: Session) -> None:
        return None

    async def serve(self, session: Session) -> None:
        await session.send("hello")
        sent = session.started_ns
        data, at_ns = await session.recv()
        assert data == "hello"
        self._latency.observe(sent, at_ns)
        self._hellos.inc()
        await RoomProbe.drop.wait()
        if RoomProbe.dropped == 0:  # exactly one session of the room ends
            RoomProbe.dropped += 1
            raise AppTimeout()
        await asyncio.Event().wait()

    async def drain(self, session: Session) -> None:
        return None

    def ended(self, session: Session, reason: str) -> None:
        return None


@pytest.fixture
def room_kind() -> Iterator[None]:
    RoomProbe.drop = asyncio.Event()
    RoomProbe.dropped = 0
    kinds.register(kinds.Kind(RoomProbeConfig, RoomProbe, roles=("publisher", "subscriber")))
    yield
    kinds.unregister("room_test")


def room_yaml(url: str, subscribers: int = 2) -> str:
    return f"""
probes:
  - name: room
    kind: room_test
    url: {url}
    subscribers: {subscribers}
    connection: {{reconnect: {{initial: 30s, max: 30s}}}}
  - name: plain
    kind: echo
    url: {url}
    interval: 100ms
"""


async def test_a_kind_registered_by_a_test_runs_exports_and_shows_status(
    room_kind: None, echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    d = await start_daemon(config(room_yaml(echo.url)))
    await wait_until(
        lambda: d.value("probe_connections_open", probe="room", role="subscriber") == 2
    )
    assert d.value("probe_connections_open", probe="room", role="publisher") == 1
    await wait_until(lambda: d.count("probe_room_hellos_total", probe="room") == 3)
    # Its own latency family carries its own SLO threshold as a bucket boundary.
    assert d.value("probe_room_hello_seconds_bucket", probe="room", le="0.033") is not None
    info = d.value("probe_info", probe="room", kind="room_test", target=echo.url, adapter="")
    assert info == 1
    (status,) = [p.status for p in d.daemon.exposition.probes() if p.name == "room"]
    assert status.kind == "room_test" and status.sessions_open == 3 and status.up
    assert status.slo == (0.033,)


async def test_one_of_three_sessions_dropping_reads_two_open(
    room_kind: None, echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    d = await start_daemon(config(room_yaml(echo.url, subscribers=2)))
    await wait_until(lambda: d.count("probe_room_hellos_total", probe="room") == 3)
    await wait_until(lambda: d.value("probe_connections_open", probe="plain") == 1)
    # One session ends with an application timeout; its reconnect is 30 s away, so the count
    # stays down while we look.
    RoomProbe.drop.set()

    def timeouts() -> float:
        return sum(
            d.count("probe_disconnects_total", probe="room", reason="timeout", role=r)
            for r in ("publisher", "subscriber")
        )

    await wait_until(lambda: timeouts() == 1)
    open_now = sum(
        d.value("probe_connections_open", probe="room", role=r) or 0
        for r in ("publisher", "subscriber")
    )
    assert open_now == 2
    (status,) = [p.status for p in d.daemon.exposition.probes() if p.name == "room"]
    assert status.sessions_open == 2 and status.disconnects["timeout"] == 1
    # The echo probe beside it is untouched.
    assert d.value("probe_connections_open", probe="plain") == 1


async def test_reloading_a_test_kind_restarts_only_that_probe(
    room_kind: None, echo: EchoTarget, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    path = tmp_path / "probed.yaml"
    path.write_text(room_yaml(echo.url, subscribers=1))
    d = await start_daemon(load_config(path), path)
    await wait_until(lambda: d.count("probe_room_hellos_total", probe="room") == 2)
    path.write_text(room_yaml(echo.url, subscribers=3))
    ok, summary = await d.daemon.reload()
    assert ok and "kept: 1" in summary and "restarted: 1" in summary, summary
    # A fresh recorder for the restarted probe: its families start again from its own sessions.
    await wait_until(
        lambda: d.value("probe_connections_open", probe="room", role="subscriber") == 3
    )
    await wait_until(lambda: d.count("probe_room_hellos_total", probe="room") == 4)


def test_an_unknown_role_is_refused() -> None:
    metrics = ProbeMetrics("x", kind="k", target="t", roles=("publisher",))
    with pytest.raises(ValueError, match="role"):
        metrics.session("subscriber")
    with pytest.raises(ValueError, match="role"):
        metrics.session()
    assert ProbeMetrics("y", kind="k", target="t").session().role is None


def test_the_config_knows_a_registered_kind_and_forgets_it(room_kind: None) -> None:
    cfg = config(room_yaml("ws://127.0.0.1:1/"))
    assert isinstance(cfg.probes[0], RoomProbeConfig) and cfg.probes[0].subscribers == 2
    kinds.unregister("room_test")
    with pytest.raises(Exception, match="known kinds: echo"):
        config(room_yaml("ws://127.0.0.1:1/"))
    kinds.register(kinds.Kind(RoomProbeConfig, RoomProbe, roles=("publisher", "subscriber")))


async def test_a_reload_keeps_unchanged_probes_by_their_running_config(
    echo: EchoTarget, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    def yaml(slow_interval: str) -> str:
        return (
            "probes:\n"
            f"  - {{name: same, kind: echo, url: '{echo.url}', interval: 100ms}}\n"
            f"  - {{name: changed, kind: echo, url: '{echo.url}', interval: {slow_interval}}}\n"
        )

    path = tmp_path / "probed.yaml"
    path.write_text(yaml("100ms"))
    d = await start_daemon(load_config(path), path)
    before = d.daemon.running_configs()
    path.write_text(yaml("200ms"))
    ok, summary = await d.daemon.reload()
    assert ok and "kept: 1" in summary and "restarted: 1" in summary, summary
    after = d.daemon.running_configs()
    # Compared by fingerprint in the parsing process: the loop keeps the running object.
    assert after["same"] is before["same"]
    assert d.daemon.config.probes[0] is before["same"]
    assert after["changed"] is not before["changed"]
    assert after["changed"].interval == 0.2
