"""The one dispatch point: each probe kind, its config model and the probe that implements it.

Adding a kind is its schema module (probed/config/schema/), its probe module (probed/probes/) and
one line in BUILT_IN below. The probe is named as "module:Class" and imported only when a probe
of that kind is built, so `probed check` loads no probe code.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Protocol

import structlog

from probed.config.schema.base import ProbeConfig
from probed.config.schema.echo import EchoProbeConfig
from probed.config.schema.fanout import FanoutProbeConfig
from probed.config.schema.http import HttpProbeConfig
from probed.config.schema.probes import register_model, unregister_model
from probed.config.schema.speech import SpeechProbeConfig
from probed.config.schema.voice_agent import VoiceAgentProbeConfig
from probed.config.schema.webrtc import WebRtcProbeConfig

if TYPE_CHECKING:
    from probed.metrics import ProbeMetrics, TaintCheck


class Probe(Protocol):
    async def run(self) -> None:
        """Measure until cancelled."""

    async def once(self) -> bool:
        """One cycle, for `probed once`: True if it met its expectations."""


class ProbeFactory(Protocol):
    def __call__(
        self, cfg: ProbeConfig, metrics: ProbeMetrics, log: structlog.typing.FilteringBoundLogger
    ) -> Probe: ...


@dataclass(frozen=True)
class Kind:
    config: type[ProbeConfig]
    # "module:Class" (imported on first build), or the factory itself (tests register their own).
    probe: str | ProbeFactory
    # A bounded label a kind gives its sessions when it holds several (publisher, subscriber).
    roles: tuple[str, ...] = ()

    def factory(self) -> ProbeFactory:
        if not isinstance(self.probe, str):
            return self.probe
        module, _, attr = self.probe.partition(":")
        found: ProbeFactory = getattr(importlib.import_module(module), attr)
        return found


BUILT_IN: Final = (
    Kind(EchoProbeConfig, "probed.probes.echo:EchoProbe"),
    Kind(HttpProbeConfig, "probed.probes.http:HttpProbe"),
    Kind(FanoutProbeConfig, "probed.probes.fanout:FanoutProbe", roles=("publisher", "subscriber")),
    Kind(SpeechProbeConfig, "probed.probes.speech:SpeechProbe"),
    Kind(WebRtcProbeConfig, "probed.probes.webrtc:WebRtcProbe"),
    Kind(VoiceAgentProbeConfig, "probed.probes.voice_agent:VoiceAgentProbe"),
)

_KINDS: dict[str, Kind] = {}
KINDS: Final[Mapping[str, Kind]] = MappingProxyType(_KINDS)


def register(kind: Kind) -> None:
    """Make a kind known to the config loader and the daemon."""
    _KINDS[register_model(kind.config)] = kind


def unregister(name: str) -> None:
    """Forget a kind (tests that register a kind of their own clean up with this)."""
    _KINDS.pop(name, None)
    unregister_model(name)


def build(
    cfg: ProbeConfig, metrics: ProbeMetrics, log: structlog.typing.FilteringBoundLogger
) -> Probe:
    return _KINDS[cfg.kind].factory()(cfg, metrics, log)


def new_metrics(cfg: ProbeConfig, tainted: TaintCheck | None = None) -> ProbeMetrics:
    """The recorder a probe of this config writes to (its kind's roles, its SLO buckets)."""
    from probed.metrics import ProbeMetrics  # not at the top: `probed check` loads no metrics

    metrics = ProbeMetrics(
        cfg.name,
        kind=cfg.kind,
        target=cfg.target,
        adapter=cfg.adapter_label,
        slo_thresholds=cfg.slo_thresholds(),
        roles=_KINDS[cfg.kind].roles,
    )
    if tainted is not None:
        metrics.tainted = tainted
    return metrics


for _kind in BUILT_IN:
    register(_kind)
