"""The daemon's supervision: one probe crashing never disturbs the others.

The crashing probe here is a stand-in on purpose: what is under test is the daemon's supervisor,
and no real probe is known to crash (every hostile-server case is classified, see
test_reconnect). The healthy probe beside it is the real echo probe against the real target.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from typing import ClassVar

import pytest
import structlog

from probed import kinds
from probed.config import ProbeConfig
from probed.metrics import ProbeMetrics
from probed.targets.echo import EchoTarget
from tests.conftest import RunningDaemon, config, wait_until

StartDaemon = Callable[..., Awaitable[RunningDaemon]]


class Crashing:
    runs: ClassVar[list[float]] = []

    async def run(self) -> None:
        Crashing.runs.append(time.monotonic())
        raise RuntimeError("a bug in a probe")

    async def once(self) -> bool:
        return False


async def test_a_crashing_probe_is_restarted_with_backoff_and_the_others_keep_going(
    echo: EchoTarget, start_daemon: StartDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_build = kinds.build

    def build(
        cfg: ProbeConfig, metrics: ProbeMetrics, log: structlog.typing.FilteringBoundLogger
    ) -> kinds.Probe:
        return Crashing() if cfg.name == "buggy" else real_build(cfg, metrics, log)

    monkeypatch.setattr(kinds, "build", build)
    Crashing.runs = []
    text = "probes:\n" + "".join(
        f"  - {{name: {n}, kind: echo, url: '{echo.url}', interval: 50ms}}\n"
        for n in ("healthy", "buggy")
    )
    d = await start_daemon(config(text))
    await wait_until(lambda: d.count("probe_messages_received_total", probe="healthy") >= 1)
    upgrades = echo.upgrades
    await wait_until(lambda: d.count("probed_probe_restarts_total", probe="buggy") >= 3, within=15)
    # Backoff between restarts: 1 s, then 2 s; never a hot loop.
    gaps = [b - a for a, b in itertools.pairwise(Crashing.runs)]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps
    # The healthy probe kept its session and its replies all along.
    before = d.count("probe_messages_received_total", probe="healthy")
    await wait_until(lambda: d.count("probe_messages_received_total", probe="healthy") > before)
    assert echo.upgrades == upgrades
    assert d.count("probed_probe_restarts_total", probe="healthy") == 0
