"""StrictModel, the base of every config model, and the sub-models probe kinds share."""

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationInfo,
    field_validator,
)

from probed.config.durations import DURATION_PATTERN, Seconds, format_duration
from probed.config.files import FileRefused, check_regular
from probed.config.schema.scripting import FilterConfig
from probed.config.schema.strict import StrictModel
from probed.config.validation import Problem, _fail, _LoadContext


def _readable_file(value: Path, info: ValidationInfo) -> Path:
    path = value
    if isinstance(info.context, _LoadContext) and info.context.base_dir is not None:
        # Relative to the config file, like Prometheus: the daemon's working directory under
        # systemd or in a container is rarely where the operator thinks it is.
        path = info.context.base_dir / value
    try:
        check_regular(path)
    except FileRefused as exc:
        raise _fail(str(exc)) from None
    except FileNotFoundError:
        raise _fail(f"file {path} does not exist") from None
    except IsADirectoryError:
        raise _fail(f"{path} is a directory, not a file") from None
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror or exc}") from None
    return path


ReadableFile = Annotated[Path, AfterValidator(_readable_file)]


def _existing_dir(value: Path, info: ValidationInfo) -> Path:
    path = value
    if isinstance(info.context, _LoadContext) and info.context.base_dir is not None:
        path = info.context.base_dir / value
    if not path.is_dir():
        raise _fail(f"{path} is not a folder")
    return path


ExistingDir = Annotated[Path, AfterValidator(_existing_dir)]


class TlsConfig(StrictModel):
    ca_file: ReadableFile | None = Field(
        default=None, description="CA bundle (PEM) to trust instead of the system's"
    )
    cert_file: ReadableFile | None = Field(
        default=None, description="client certificate (PEM) for mutual TLS"
    )
    key_file: ReadableFile | None = Field(
        default=None,
        description="private key of cert_file (PEM); needs cert_file; omit if cert_file holds it",
    )
    server_name: str | None = Field(
        default=None,
        description="name sent as SNI and checked against the certificate (default: URL host)",
    )
    insecure_skip_verify: bool = Field(
        default=False,
        description="skip the certificate chain and name checks (a lab, never production); "
        "no certificate expiry is exported then",
    )

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
    mode: Annotated[Literal["ping", "message", "off"], BeforeValidator(_yaml_off)] = Field(
        default="ping",
        description="ping: WebSocket ping/pong; message: send `message` and require any inbound "
        "data within interval + timeout (servers that ignore pings); off: TCP alone",
    )
    interval: Seconds = Field(default=15.0, description="how often to ping (or send message)")
    timeout: Seconds = Field(
        default=10.0, description="no pong (or no data) this long after: the session stalled"
    )
    message: str | None = Field(
        default=None,
        description='mode "message": the heartbeat sent every interval, a template ({probe}, '
        "{seq}, {send_time} and the setup steps' captures)",
    )
    expect: FilterConfig | None = Field(
        default=None,
        description='mode "message": the answer each heartbeat must get within timeout, else the '
        "session stalled (answers are kept from the probe's own reading)",
    )

    def _semantic_problems(self) -> list[Problem]:
        if self.expect is not None and self.mode != "message":
            return [(("expect",), 'only used when mode is "message"')]
        if self.mode == "message" and not self.message:
            return [(("message",), 'required when mode is "message"')]
        if self.mode != "message" and self.message is not None:
            return [(("message",), f'only used when mode is "message" (mode is "{self.mode}")')]
        return []


class ReconnectConfig(StrictModel):
    initial: Seconds = Field(
        default=0.5, description="first backoff after a session or connect fails (the floor)"
    )
    max: Seconds = Field(default=30.0, description="longest backoff (capped exponential, jittered)")
    reset_after: Seconds = Field(
        default=30.0,
        description="a session that lived this long reconnects at once and resets the backoff",
    )

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
    connect_timeout: Seconds = Field(
        default=10.0,
        description="deadline for each connect phase: dns, tcp, tls, upgrade, setup",
    )
    keepalive: KeepaliveConfig = Field(
        default=KeepaliveConfig(),
        json_schema_extra=_keepalive_shorthand_schema,
        description="how a dead session is noticed; `keepalive: 15s` pings every 15 s, "
        "`keepalive: off` relies on TCP",
    )
    reconnect: ReconnectConfig = Field(
        default=ReconnectConfig(), description="backoff between reconnects"
    )
    churn: Seconds | None = Field(
        default=None,
        description="close the session on purpose (code 1000) this often and reconnect, so "
        "reconnects are timed while all is well; at least 1s",
    )
    close_timeout: Seconds = Field(
        default=2.0, description="how long to wait for the close handshake before dropping TCP"
    )

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
    latency: Seconds = Field(
        default=0.05,
        description="latency objective; becomes an exact histogram bucket boundary",
    )
