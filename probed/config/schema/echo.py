"""The echo probe kind: a held WebSocket session with open-loop request/reply latency."""

from typing import Final, Literal

from pydantic import Field

from probed.config.durations import Seconds, _to_ns, format_duration
from probed.config.schema.base import ProbeConfig
from probed.config.schema.common import SloConfig
from probed.config.schema.endpoint import WebSocketEndpoint
from probed.config.schema.scripting import MessageConfig
from probed.config.validation import Problem
from probed.template import check_template

MAX_IN_FLIGHT: Final = 10_000


class EchoProbeConfig(WebSocketEndpoint, ProbeConfig):
    kind: Literal["echo"]
    interval: Seconds = Field(default=1.0, description="one message every interval (open loop)")
    timeout: Seconds = Field(
        default=5.0, description="a reply later than this: the message is lost"
    )
    message: MessageConfig = Field(
        default=MessageConfig(), description="what is sent and how replies are matched"
    )
    slo: SloConfig = Field(default=SloConfig(), description="the round trip objective")

    def _semantic_problems(self) -> list[Problem]:
        problems = super()._semantic_problems()
        known = {"id", "seq", "send_time", "probe"} | self.captures
        problems.extend(
            (("message", "template"), message)
            for message in check_template(self.message.template, known)
        )
        if self.slo.latency > self.timeout:
            problems.append(
                (
                    ("slo", "latency"),
                    f"must not be longer than timeout ({format_duration(self.timeout)}): "
                    "a reply slower than timeout is already lost",
                )
            )
        if self.max_in_flight > MAX_IN_FLIGHT:
            problems.append(
                (
                    ("interval",),
                    f"timeout/interval would keep {self.max_in_flight} messages in flight "
                    f"(at most {MAX_IN_FLIGHT}); lengthen interval or shorten timeout",
                )
            )
        return problems

    def slo_thresholds(self) -> tuple[float, ...]:
        return (self.slo.latency,)

    @property
    def max_in_flight(self) -> int:
        # Integer nanoseconds: float division makes e.g. 1.1s / 100ms land just above 11.
        timeout_ns, interval_ns = _to_ns(self.timeout), _to_ns(self.interval)
        return -(-timeout_ns // interval_ns) + 1
