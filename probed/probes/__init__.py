"""Probe kinds. Each module holds one kind; `build` maps a probe's config to its implementation."""

from __future__ import annotations

from typing import Protocol

import structlog

from probed.config import ProbeConfig
from probed.metrics import ProbeMetrics
from probed.probes.echo import EchoProbe


class Probe(Protocol):
    async def run(self) -> None:
        """Measure until cancelled."""

    async def once(self) -> bool:
        """One cycle, for `probed once`: True if it met its expectations."""


def slo_thresholds(cfg: ProbeConfig) -> tuple[float, ...]:
    """A probe's SLO thresholds, which become exact bucket boundaries of its histograms."""
    return (cfg.slo.latency,)


def build(
    cfg: ProbeConfig, metrics: ProbeMetrics, log: structlog.typing.FilteringBoundLogger
) -> Probe:
    # One kind today; later kinds dispatch on cfg.kind here.
    return EchoProbe(cfg, metrics, log)
