"""StrictModel, the base of every config model, and the sub-models probe kinds share."""

from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from probed.config.durations import DURATION_PATTERN, Seconds, format_duration
from probed.config.validation import Problem, _fail, _LoadContext, _problems_error


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check_semantics(self) -> Self:
        problems = self._semantic_problems()
        if problems:
            raise _problems_error(problems)
        return self

    def _semantic_problems(self) -> list[Problem]:
        """Cross-field checks; runs only once every field is individually valid."""
        return []


def _readable_file(value: Path, info: ValidationInfo) -> Path:
    path = value
    if isinstance(info.context, _LoadContext) and info.context.base_dir is not None:
        # Relative to the config file, like Prometheus: the daemon's working directory under
        # systemd or in a container is rarely where the operator thinks it is.
        path = info.context.base_dir / value
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise _fail(f"file {path} does not exist") from None
    except IsADirectoryError:
        raise _fail(f"{path} is a directory, not a file") from None
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror or exc}") from None
    return path


ReadableFile = Annotated[Path, AfterValidator(_readable_file)]


class TlsConfig(StrictModel):
    ca_file: ReadableFile | None = None
    cert_file: ReadableFile | None = None
    key_file: ReadableFile | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False

    @field_validator("server_name")
    @classmethod
    def _check_server_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() for c in value)):
            raise _fail("must be a host name")
        return value

    def _semantic_problems(self) -> list[Problem]:
        if self.key_file is not None and self.cert_file is None:
            return [
                (("key_file",), "key_file needs cert_file (the certificate the key belongs to)")
            ]
        return []


def _yaml_off(value: object) -> object:
    # YAML 1.1 reads a bare `off` as false; "mode: off" must still mean mode "off".
    return "off" if value is False else value


class KeepaliveConfig(StrictModel):
    # ping: WebSocket ping/pong. message: send `message` every interval and require any inbound
    # data within interval + timeout (for servers that ignore pings). off: rely on TCP alone.
    mode: Annotated[Literal["ping", "message", "off"], BeforeValidator(_yaml_off)] = "ping"
    interval: Seconds = 15.0
    timeout: Seconds = 10.0
    message: str | None = None

    def _semantic_problems(self) -> list[Problem]:
        if self.mode == "message" and not self.message:
            return [(("message",), 'required when mode is "message"')]
        if self.mode != "message" and self.message is not None:
            return [(("message",), f'only used when mode is "message" (mode is "{self.mode}")')]
        return []


class ReconnectConfig(StrictModel):
    initial: Seconds = 0.5
    max: Seconds = 30.0
    reset_after: Seconds = 30.0

    def _semantic_problems(self) -> list[Problem]:
        if self.initial > self.max:
            return [
                (
                    ("initial",),
                    f"must not be longer than max ({format_duration(self.initial)} > "
                    f"{format_duration(self.max)})",
                )
            ]
        return []


def _keepalive_shorthand_schema(schema: dict[str, Any]) -> None:
    # Editors should accept the shorthands too: `keepalive: 15s` and `keepalive: off`.
    full = {k: schema.pop(k) for k in ("$ref", "allOf") if k in schema}
    schema["anyOf"] = [
        full,
        {"type": "string", "pattern": DURATION_PATTERN, "description": "ping every interval"},
        {"const": False, "description": "off"},
        {"const": "off"},
    ]


class ConnectionConfig(StrictModel):
    connect_timeout: Seconds = 10.0  # a deadline for each phase: dns, tcp, tls, upgrade, setup
    keepalive: KeepaliveConfig = Field(
        default=KeepaliveConfig(), json_schema_extra=_keepalive_shorthand_schema
    )
    reconnect: ReconnectConfig = ReconnectConfig()
    churn: Seconds | None = None
    close_timeout: Seconds = 2.0

    @field_validator("keepalive", mode="before")
    @classmethod
    def _keepalive_shorthand(cls, value: object) -> object:
        # `keepalive: 15s` (ping every 15 s) and `keepalive: off` are what most configs need.
        if value is False or value == "off":
            return {"mode": "off"}
        if isinstance(value, str):
            return {"interval": value}
        return value

    @field_validator("churn")
    @classmethod
    def _check_churn(cls, value: float | None) -> float | None:
        # Faster churn measures the connect path more than the service and hammers the target.
        if value is not None and value < 1.0:
            raise _fail("must be at least 1s")
        return value


class SloConfig(StrictModel):
    latency: Seconds = 0.05
