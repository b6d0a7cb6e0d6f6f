"""The http probe kind: an HTTP API beside the realtime service, on a kept-alive connection."""

from typing import Final, Literal

from pydantic import Field, field_validator

from probed.config.durations import Seconds, format_duration
from probed.config.schema.base import ProbeConfig
from probed.config.schema.endpoint import HttpEndpoint
from probed.config.schema.strict import StrictModel
from probed.config.validation import Problem, _fail

_MAX_BODY: Final = 1 << 20


class HttpExpect(StrictModel):
    status: list[int] = Field(default=[200], description="acceptable status codes")
    body_contains: str | None = Field(default=None, description="text the body must contain")

    @field_validator("status")
    @classmethod
    def _check_status(cls, value: list[int]) -> list[int]:
        if not value:
            raise _fail("needs at least one status code")
        if any(not 100 <= code <= 599 for code in value):
            raise _fail("status codes are between 100 and 599")
        return value


class HttpSloConfig(StrictModel):
    latency: Seconds = Field(default=0.2, description="request to full response (p95 target)")


class HttpProbeConfig(HttpEndpoint, ProbeConfig):
    kind: Literal["http"]
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = Field(
        default="GET", description="HTTP method of each request"
    )
    body: str | None = Field(
        default=None, description="request body; {seq}, {send_time} and {probe} are filled in"
    )
    interval: Seconds = Field(default=5.0, description="one request every interval (open loop)")
    timeout: Seconds = Field(default=5.0, description="no full response within this: failed")
    expect: HttpExpect = Field(
        default=HttpExpect(), description="what a response must be to count as ok"
    )
    slo: HttpSloConfig = Field(default=HttpSloConfig(), description="the response time objective")

    @field_validator("body")
    @classmethod
    def _check_body(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) > _MAX_BODY:
            raise _fail(f"at most {_MAX_BODY} bytes")
        return value

    def _semantic_problems(self) -> list[Problem]:
        problems = super()._semantic_problems()
        if self.slo.latency > self.timeout:
            problems.append(
                (
                    ("slo", "latency"),
                    f"must not be longer than timeout ({format_duration(self.timeout)})",
                )
            )
        if self.body is not None and self.method in ("GET", "HEAD"):
            problems.append((("body",), f"a {self.method} request has no body"))
        return problems

    def slo_thresholds(self) -> tuple[float, ...]:
        return (self.slo.latency,)

    @property
    def max_in_flight(self) -> int:
        return int(self.timeout // self.interval) + 1
