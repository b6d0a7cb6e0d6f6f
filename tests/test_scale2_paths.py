"""The echo probe's timer-driven open loop and the cheap per-message paths (issue 10)."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import weakref

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probed import gcpolicy, kinds, logs
from probed.config import EchoProbeConfig
from probed.probes.echo import EchoProbe
from probed.targets.echo import EchoTarget
from probed.template import Template, _escape
from tests.conftest import config, wait_until


def echo_probe(url: str, interval: str = "50ms") -> EchoProbe:
    cfg = config(
        f"""
probes:
  - name: p
    kind: echo
    url: {url}
    interval: {interval}
    timeout: 1s
"""
    ).probes[0]
    assert isinstance(cfg, EchoProbeConfig)
    return EchoProbe(cfg, kinds.new_metrics(cfg), logs.get(probe="p"))


@given(st.text())
def test_escaping_skips_json_only_where_it_would_change_nothing(value: str) -> None:
    assert _escape(value) == json.dumps(value, ensure_ascii=False)[1:-1]


def test_a_rendered_json_message_stays_json_whatever_the_values() -> None:
    template = Template('{"id": "{id}", "probe": "{probe}"}')
    for probe in ("p00001", 'a"b', "back\\slash", "new\nline", "tab\t", "\x7f", "é"):
        assert json.loads(template.render({"id": "ab-1-2", "probe": probe}))["probe"] == probe


async def test_messages_leave_on_schedule_and_are_answered(echo: EchoTarget) -> None:
    probe = echo_probe(echo.url)
    run = asyncio.create_task(probe.run())
    try:
        status = probe._metrics.status
        await wait_until(lambda: len(status.recent) >= 5, what="5 replies")
        assert status.lost == 0
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    assert probe._expiry is None  # no timer outlives the probe


async def test_a_starved_loop_skips_slots_instead_of_bursting(echo: EchoTarget) -> None:
    probe = echo_probe(echo.url)
    run = asyncio.create_task(probe.run())
    try:
        status = probe._metrics.status
        await wait_until(lambda: status.sent >= 3, what="3 messages")
        before = status.sent
        time.sleep(0.5)  # noqa: ASYNC251 - starve the loop on purpose: ten slots go by
        await wait_until(lambda: status.sent > before, what="sending again")
        await asyncio.sleep(0)
        # One message for the current slot, not the ten that were missed.
        assert status.sent - before <= 2
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


async def test_a_failing_send_crashes_the_probe_like_a_sending_task_would(
    echo: EchoTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = echo_probe(echo.url)

    def broken(_session: object) -> tuple[str, str]:
        raise RuntimeError("template broke")

    monkeypatch.setattr(probe, "_next_message", broken)
    with pytest.raises(ExceptionGroup) as crashed:
        await asyncio.wait_for(probe.run(), 10)
    assert crashed.group_contains(RuntimeError, match="template broke")


class _Cycle:
    def __init__(self) -> None:
        self.me = self  # only the collector can free it


async def test_while_dialling_survivors_are_frozen_uncollected_then_collected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gcpolicy, "SETTLING_S", 5.0)
    monkeypatch.setattr(gcpolicy, "STARTING_FREEZE_S", 0.01)
    monkeypatch.setattr(gcpolicy, "STARTING_FREEZE_MIN_OBJECTS", 0)
    task: asyncio.Task[None] | None = None
    try:
        gcpolicy.starting()
        task = asyncio.create_task(gcpolicy.freeze_when_settled(1.0))
        await asyncio.sleep(0)
        early = _Cycle()
        early_ref = weakref.ref(early)
        del early
        frozen = gc.get_freeze_count()
        await wait_until(lambda: gc.get_freeze_count() > frozen, what="a freeze while dialling")
        assert early_ref() is not None, "no collection pass while the fleet dials"
        await asyncio.sleep(1.05)  # past the dialling window (settle_s), still settling
        late = _Cycle()
        late_ref = weakref.ref(late)
        del late
        await wait_until(lambda: late_ref() is None, what="a collecting pass after dialling")
        assert not gc.isenabled(), "still settling: no automatic collection yet"
        gcpolicy.refreeze()
        assert early_ref() is None, "the refreeze reclaims what the start froze"
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        gc.enable()
        gc.unfreeze()


async def test_settled_fleets_collect_young_objects_less_often_until_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gcpolicy, "SETTLING_S", 0.0)
    monkeypatch.setattr(gcpolicy, "STARTING_FREEZE_S", 0.01)
    before = gc.get_threshold()
    try:
        gcpolicy.starting()
        task = asyncio.create_task(gcpolicy.freeze_when_settled(0.05, probes=10_000))
        await wait_until(gc.isenabled, what="automatic collection back after settling")
        steady = (50_000, 10, 10)
        await wait_until(lambda: gc.get_threshold() == steady, what="steady")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert gc.get_threshold() == before, "whoever embeds the daemon gets its thresholds back"
    finally:
        gc.set_threshold(*before)
        gc.enable()
        gc.unfreeze()
