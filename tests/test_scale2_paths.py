"""The echo probe's timer-driven open loop and the cheap per-message paths (issue 10)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probed import kinds, logs
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
