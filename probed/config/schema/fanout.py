"""The fanout probe kind: one publisher and several subscribers, one-way delivery on one clock."""

from typing import Literal

from pydantic import Field

from probed.config.durations import Seconds, format_duration
from probed.config.schema.base import ProbeConfig
from probed.config.schema.common import SloConfig
from probed.config.schema.endpoint import WebSocketEndpoint
from probed.config.schema.scripting import MessageConfig
from probed.config.validation import Problem
from probed.template import check_template


class SubscribersConfig(WebSocketEndpoint):
    count: int = Field(default=3, ge=1, le=100, description="subscriber sessions to hold")


class FanoutProbeConfig(ProbeConfig):
    kind: Literal["fanout"]
    publisher: WebSocketEndpoint = Field(
        description="the session that publishes: url, setup steps, connection settings"
    )
    subscribers: SubscribersConfig = Field(
        description="the sessions that should each receive every message, and how many"
    )
    interval: Seconds = Field(default=1.0, description="one publish every interval (open loop)")
    timeout: Seconds = Field(
        default=5.0, description="a subscriber without the message after this: lost there"
    )
    message: MessageConfig = Field(
        default=MessageConfig(),
        description="what the publisher sends; `match` says how subscribers recognise it",
    )
    slo: SloConfig = Field(
        default=SloConfig(), description="the publish-to-subscriber delivery objective"
    )

    def _semantic_problems(self) -> list[Problem]:
        problems = super()._semantic_problems()
        known = {"id", "seq", "send_time", "probe"} | self.publisher.captures
        problems.extend(
            (("message", "template"), message)
            for message in check_template(self.message.template, known)
        )
        if self.message.match.json_ is None:
            problems.append(
                (("message", "match", "json"), "fan-out needs the id's JSON path (no raw match)")
            )
        if self.slo.latency > self.timeout:
            problems.append(
                (
                    ("slo", "latency"),
                    f"must not be longer than timeout ({format_duration(self.timeout)})",
                )
            )
        return problems

    @property
    def target(self) -> str:
        return self.publisher.target

    @property
    def sessions(self) -> int:
        return 1 + self.subscribers.count

    def slo_thresholds(self) -> tuple[float, ...]:
        return (self.slo.latency,)
