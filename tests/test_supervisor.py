"""The session supervisor's hooks for probes: application setup, resumption, handler verdicts.

Probes plug into the supervisor through SessionHandler; these handlers are small real probes
against the real echo target, exercising what speech adapters will rely on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from probed import logs
from probed.config import EchoProbeConfig
from probed.connection import AppTimeout, GoAway, Session, SessionEnded, Supervisor
from probed.metrics import ProbeMetrics
from probed.targets.echo import EchoTarget
from tests.conftest import config, wait_until


class Handler:
    """Says hello in setup, waits for the echo as the 'ready' signal, then does what it is told."""

    def __init__(self) -> None:
        self.supervisor: Supervisor | None = None
        self.setups: list[str | None] = []
        self.ended_reasons: list[str] = []
        self.fail_setup: BaseException | None = None
        self.end_with: type[SessionEnded] | None = None
        self.hang_setup = False

    async def setup(self, session: Session) -> None:
        self.setups.append(session.resume_handle)
        if self.hang_setup:
            await asyncio.Event().wait()
        if self.fail_setup is not None:
            raise self.fail_setup
        await session.send("hello")
        data, _ = await session.recv()
        assert data == "hello"

    async def serve(self, session: Session) -> None:
        # A provider hands out a resumption handle during the session.
        session.resume_handle = f"handle-{session.epoch}"
        if self.end_with is not None:
            raise self.end_with()
        while True:
            await session.recv()

    async def drain(self, session: Session) -> None:
        return None

    def ended(self, session: Session, reason: str) -> None:
        self.ended_reasons.append(reason)


@pytest.fixture
async def supervised(echo: EchoTarget) -> AsyncIterator[tuple[Handler, ProbeMetrics, EchoTarget]]:
    handler = Handler()
    metrics = ProbeMetrics("sup", kind="test", target=echo.url)
    endpoint = config(
        f"""
probes:
  - name: sup
    kind: echo
    url: {echo.url}
    connection: {{connect_timeout: 300ms, reconnect: {{initial: 10ms, max: 50ms}}}}
"""
    ).probes[0]
    assert isinstance(endpoint, EchoProbeConfig)
    sup = Supervisor(
        endpoint, metrics=metrics.session(), handler=handler, log=logs.get(probe="sup")
    )
    handler.supervisor = sup
    task = asyncio.create_task(sup.run())
    yield handler, metrics, echo
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def count(metrics: ProbeMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_resumption_handle_is_carried_into_the_next_setup(
    supervised: tuple[Handler, ProbeMetrics, EchoTarget],
) -> None:
    handler, metrics, echo = supervised
    await wait_until(lambda: metrics.status.up)
    for sessions in (2, 3):
        echo.close_all(1001, "going away")

        def reconnected(n: int = sessions) -> bool:
            return len(handler.setups) == n and metrics.status.up

        await wait_until(reconnected)
    assert handler.setups == [None, "handle-1", "handle-2"]
    assert handler.ended_reasons == ["server_close", "server_close"]
    # Setup (hello + echo) is part of connecting: its phase is timed.
    assert count(metrics, "probe_connect_phase_seconds", phase="setup") > 0


@pytest.mark.parametrize(("verdict", "reason"), [(GoAway, "go_away"), (AppTimeout, "timeout")])
async def test_handler_verdicts_become_disconnect_reasons(
    supervised: tuple[Handler, ProbeMetrics, EchoTarget],
    verdict: type[SessionEnded],
    reason: str,
) -> None:
    handler, metrics, echo = supervised
    handler.end_with = verdict
    await wait_until(lambda: count(metrics, "probe_disconnects_total", reason=reason) >= 2)
    # The probe closed politely: the server saw a normal closure.
    await wait_until(lambda: 1000 in echo.close_codes)


async def test_setup_failures_are_connect_errors(
    supervised: tuple[Handler, ProbeMetrics, EchoTarget],
) -> None:
    handler, metrics, _echo = supervised
    await wait_until(lambda: metrics.status.up)
    handler.fail_setup = SessionEnded()
    handler.supervisor.session.ws.transport.abort()  # type: ignore[union-attr]
    await wait_until(lambda: count(metrics, "probe_connect_errors_total", reason="setup") >= 2)
    handler.fail_setup = None
    handler.hang_setup = True
    await wait_until(lambda: count(metrics, "probe_connect_errors_total", reason="timeout") >= 1)
    assert not metrics.status.up
