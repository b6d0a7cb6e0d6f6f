"""The probed configuration: schema, YAML loading, durations, secrets and error reporting.

Everything the daemon knows about its configuration lives here. The schema is strict (unknown
keys are errors) and every error names the YAML path and line, because the people reading these
errors are SREs staring at a 300-line file during an incident, not Python developers.

Loading is two-phased: the YAML is composed into a node tree (so every value's line is known,
duplicate keys can be caught and ``${VAR}`` can be expanded per scalar), converted to plain
Python data, and then validated by pydantic. Pydantic error locations are mapped back to YAML
paths and lines; messages are built from the error type and pydantic's ``msg`` only, never from
the offending input, so a secret never leaks into an error.
"""

import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from difflib import get_close_matches
from fractions import Fraction
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Final, Literal, Self, TypeAlias, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

__all__ = [
    "DURATION_PATTERN",
    "MAX_IN_FLIGHT",
    "PROBE_KINDS",
    "RESERVED_LABEL_NAMES",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "ConnectionConfig",
    "GlobalConfig",
    "KeepaliveConfig",
    "MatchConfig",
    "MessageConfig",
    "ProbeConfig",
    "ReadableFile",
    "ReconnectConfig",
    "Seconds",
    "SloConfig",
    "StrictModel",
    "TlsConfig",
    "WebSocketProbeConfig",
    "config_json_schema",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
]

Loc: TypeAlias = tuple[str | int, ...]
# A semantic problem found by a validator: where (relative to the model being validated) and what.
Problem: TypeAlias = tuple[Loc, str]

# ---------------------------------------------------------------------------------------------
# Durations

_NS_PER_UNIT: Final[dict[str, int]] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # micro sign
    "μs": 1_000,  # greek mu: both look the same on screen, so accept both (as Go does)
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
# Longer units first so "ms" is not read as "m" followed by a stray "s".
_UNIT = r"(?:ns|us|µs|μs|ms|s|m|h)"
DURATION_PATTERN: Final = rf"^(?:{_NUMBER}{_UNIT})+$"
_DURATION_RE: Final = re.compile(DURATION_PATTERN)
_DURATION_PART_RE: Final = re.compile(rf"({_NUMBER})({_UNIT})")
_BARE_NUMBER_RE: Final = re.compile(rf"[+-]?{_NUMBER}(?:[eE][+-]?\d+)?")
_EXAMPLES: Final = "e.g. 500ms or 2s"
_UNIT_HINT: Final = f"needs a unit, {_EXAMPLES}"
_NS_PER_SECOND: Final = 1_000_000_000


def _quoted(text: str, limit: int = 40) -> str:
    return json.dumps(text if len(text) <= limit else text[:limit] + "...", ensure_ascii=False)


class _DurationError(ValueError):
    """Why a text is not a duration, without the text: callers decide whether to echo it."""


def _parse_duration(text: str) -> float:
    stripped = text.strip()
    if not stripped:
        raise _DurationError(f"empty duration; {_UNIT_HINT}")
    if _BARE_NUMBER_RE.fullmatch(stripped):
        raise _DurationError(_UNIT_HINT)
    if stripped.startswith("-"):
        raise _DurationError("a duration cannot be negative")
    if not _DURATION_RE.fullmatch(stripped):
        raise _DurationError(
            "not a duration: use numbers with units ns, us, ms, s, m or h, "
            "e.g. 500ms, 1.5s or 1h30m"
        )
    # Exact arithmetic, so "1h30m" and "0.1s" come out as the float nearest the true value.
    total = sum(
        (
            Fraction(number) * _NS_PER_UNIT[unit]
            for number, unit in _DURATION_PART_RE.findall(stripped)
        ),
        Fraction(0),
    )
    return float(total / _NS_PER_SECOND)


def parse_duration(text: str) -> float:
    """Parse a Go-style duration ("500ms", "1.5s", "2m", "1h30m", "250us") into seconds.

    A bare number is refused: "timeout: 5" is ambiguous enough (seconds? milliseconds?) that
    guessing would eventually page someone for the wrong reason.
    """
    try:
        return _parse_duration(text)
    except _DurationError as exc:
        raise ValueError(f"{exc} (got {_quoted(text)})") from None


def _to_ns(seconds: float) -> int:
    return round(seconds * _NS_PER_SECOND)


def format_duration(seconds: float) -> str:
    """The shortest duration string that parse_duration() reads back as the same value."""
    ns = _to_ns(seconds)
    if ns == 0:
        return "0s"
    parts = []
    for unit in ("h", "m", "s", "ms", "us", "ns"):
        count, ns = divmod(ns, _NS_PER_UNIT[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


@dataclass(frozen=True)
class _LoadContext:
    """Passed as pydantic validation context by parse_config(): marks input that came from a
    config file (where bare numbers are refused) and says where relative paths start."""

    base_dir: Path | None


_PROBLEMS_ERROR: Final = "probed_config"


def _problems_error(problems: Sequence[Problem], echo: str | None = None) -> PydanticCustomError:
    # One pydantic error can carry several problems with their own sub-locations; the loader
    # expands them back into separate issues. The summary keeps the error readable for code
    # that builds models directly and sees a plain ValidationError.
    summary = "; ".join(
        f"{_format_path(loc)}: {message}" if loc else message for loc, message in problems
    )
    if echo is not None:
        summary += f" (got {echo})"
    # `echo` is the offending input, kept apart from the message so the loader can leave it out
    # when the value came from an environment variable (which may well hold a secret).
    return PydanticCustomError(
        _PROBLEMS_ERROR,
        "{summary}",
        {"summary": summary, "problems": tuple(problems), "echo": echo},
    )


def _fail(message: str, echo: str | None = None) -> PydanticCustomError:
    return _problems_error([((), message)], echo)


def _to_seconds(value: object, info: ValidationInfo) -> float:
    if isinstance(value, str):
        try:
            return _parse_duration(value)
        except _DurationError as exc:
            raise _fail(str(exc), echo=_quoted(value)) from None
    if isinstance(value, bool):
        raise _fail(f"expected a duration, {_EXAMPLES}")
    if isinstance(value, int | float):
        if isinstance(info.context, _LoadContext):
            raise _fail(_UNIT_HINT, echo=_quoted(str(value)))
        # Code (tests, the daemon itself) may build models with plain seconds.
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    raise _fail(f"expected a duration, {_EXAMPLES}")


def _positive(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise _fail("must be longer than 0s")
    return value


# A duration with no bound; fields that accept 0 can build on this instead of Seconds.
_Duration = Annotated[
    float,
    BeforeValidator(_to_seconds),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "a duration with a unit: ns, us, ms, s, m, h (e.g. 500ms, 1.5s, 1h30m)",
        }
    ),
]
Seconds = Annotated[_Duration, AfterValidator(_positive)]


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

# ---------------------------------------------------------------------------------------------
# Models


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


class ConnectionConfig(StrictModel):
    connect_timeout: Seconds = 10.0  # a deadline for each phase: dns, tcp, tls, upgrade, setup
    keepalive: KeepaliveConfig = KeepaliveConfig()
    reconnect: ReconnectConfig = ReconnectConfig()
    churn: Seconds | None = None
    close_timeout: Seconds = 2.0

    @field_validator("keepalive", mode="before")
    @classmethod
    def _keepalive_shorthand(cls, value: object) -> object:
        # `keepalive: 15s` (ping every 15 s) and `keepalive: off` are what most configs need.
        if value is False:
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


class MatchConfig(StrictModel):
    # `json` would shadow BaseModel.json(), so the attribute is json_ and the key is "json".
    json_: str | None = Field(default=None, alias="json")
    raw: bool = False

    @field_validator("json_")
    @classmethod
    def _check_json_path(cls, value: str | None) -> str | None:
        if value is not None and not all(part.strip() for part in value.split(".")):
            raise _fail("must be a field name or a dotted path such as data.id")
        return value

    def _semantic_problems(self) -> list[Problem]:
        if self.json_ is not None and self.raw:
            return [((), "set either json or raw, not both")]
        if self.json_ is None and not self.raw:
            return [((), "set json (the reply field holding the id) or raw: true")]
        return []


class MessageConfig(StrictModel):
    template: str = Field(
        default='{"type":"ping","id":"{id}","seq":{seq},"sent_at":{send_time}}',
        description="text of each message; {id}, {seq}, {send_time} and {probe} are filled in",
    )
    match: MatchConfig = MatchConfig(json="id")

    def _semantic_problems(self) -> list[Problem]:
        if self.match.json_ is not None and "{id}" not in self.template:
            return [(("template",), "must contain {id} when replies are matched by a JSON field")]
        if self.match.raw and "{id}" not in self.template and "{seq}" not in self.template:
            return [
                (
                    ("template",),
                    "must contain {id} or {seq} when replies are matched as raw text, "
                    "or every message would look the same",
                )
            ]
        return []


class SloConfig(StrictModel):
    latency: Seconds = 0.05


_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$"
_NAME_RE: Final = re.compile(_NAME_PATTERN)
# RFC 9110 token: what a header name or a subprotocol may be made of.
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# The WebSocket client writes these during the handshake; a second copy breaks the upgrade.
_HANDSHAKE_HEADERS: Final = frozenset(
    {
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)
MAX_IN_FLIGHT: Final = 10_000


class WebSocketProbeConfig(StrictModel):
    kind: Literal["websocket"]
    name: str = Field(json_schema_extra={"pattern": _NAME_PATTERN})
    # Not in repr: a URL can carry credentials (userinfo, ?key=...). repr shows `target` instead.
    url: str = Field(repr=False, json_schema_extra={"pattern": "^[wW][sS][sS]?://"})
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    bearer_token: SecretStr | None = None
    bearer_token_file: ReadableFile | None = None
    subprotocols: list[str] = Field(default_factory=list)
    tls: TlsConfig = TlsConfig()
    interval: Seconds = 1.0
    timeout: Seconds = 5.0
    message: MessageConfig = MessageConfig()
    connection: ConnectionConfig = ConnectionConfig()
    slo: SloConfig = SloConfig()

    # Read at load so a missing token fails `probed check`, not the first connect at 3 am. Being
    # private state it still takes part in ==, so a rotated token counts as a changed probe.
    _file_token: SecretStr | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise _fail(
                "must be 1 to 63 letters, digits, '_', '.', ':' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # Messages here never quote the URL: it may hold credentials.
        if not value or any(c.isspace() for c in value):
            raise _fail("must be a ws:// or wss:// URL without spaces")
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            raise _fail("is not a valid URL (check the host and port)") from None
        if parts.scheme not in ("ws", "wss"):
            raise _fail("must be a ws:// or wss:// URL")
        if not parts.hostname:
            raise _fail("has no host")
        if port == 0:
            raise _fail("has an invalid port")
        if parts.fragment:
            raise _fail("must not have a #fragment (WebSocket URLs cannot carry one)")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        problems: list[Problem] = []
        seen: dict[str, str] = {}
        for name, secret in value.items():
            lowered = name.lower()
            if not _TOKEN_RE.fullmatch(name):
                problems.append(((name,), "is not a valid HTTP header name"))
            elif lowered in _HANDSHAKE_HEADERS:
                hint = "; use subprotocols" if lowered == "sec-websocket-protocol" else ""
                problems.append(((name,), f"is set by the WebSocket handshake{hint}"))
            elif lowered in seen:
                problems.append(
                    ((name,), f'same header as "{seen[lowered]}" (names are case-insensitive)')
                )
            seen.setdefault(lowered, name)
            if any(c in secret.get_secret_value() for c in "\r\n\0"):
                problems.append(((name,), "value must not contain line breaks or NUL characters"))
        if problems:
            raise _problems_error(problems)
        return value

    @field_validator("bearer_token")
    @classmethod
    def _check_bearer_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_token_text(value.get_secret_value())
        return value

    @field_validator("subprotocols")
    @classmethod
    def _check_subprotocols(cls, value: list[str]) -> list[str]:
        problems: list[Problem] = []
        for index, protocol in enumerate(value):
            if not _TOKEN_RE.fullmatch(protocol):
                problems.append(((index,), "is not a valid subprotocol name"))
            elif protocol in value[:index]:
                problems.append(((index,), "is listed twice"))
        if problems:
            raise _problems_error(problems)
        return value

    def _semantic_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.bearer_token is not None and self.bearer_token_file is not None:
            problems.append(
                (("bearer_token_file",), "set bearer_token or bearer_token_file, not both")
            )
        elif self.bearer_token_file is not None:
            try:
                token = self.bearer_token_file.read_text(encoding="utf-8").strip()
                _check_token_text(token)
                self._file_token = SecretStr(token)
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not UTF-8 text"
                problems.append((("bearer_token_file",), f"cannot read the token: {reason}"))
            except PydanticCustomError as exc:
                problems.append((("bearer_token_file",), exc.message()))
        if self.bearer_token is not None or self.bearer_token_file is not None:
            for name in self.headers:
                if name.lower() == "authorization":
                    problems.append(
                        (
                            ("headers", name),
                            "conflicts with bearer_token/bearer_token_file; keep one",
                        )
                    )
        if self.tls != TlsConfig() and urlsplit(self.url).scheme != "wss":
            problems.append((("tls",), "tls options need a wss:// url"))
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

    def request_headers(self) -> dict[str, str]:
        """The handshake headers in plain text: the one place secrets leave their wrappers."""
        headers = {name: value.get_secret_value() for name, value in self.headers.items()}
        token = self.bearer_token or self._file_token
        if token is not None:
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        return headers

    @property
    def target(self) -> str:
        """The URL for labels and logs: scheme://host[:port]/path, nothing that may be secret."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
        return f"{parts.scheme}://{host}{port}{parts.path or '/'}"

    @property
    def max_in_flight(self) -> int:
        # Integer nanoseconds: float division makes e.g. 1.1s / 100ms land just above 11.
        timeout_ns, interval_ns = _to_ns(self.timeout), _to_ns(self.interval)
        return -(-timeout_ns // interval_ns) + 1

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield from super().__repr_args__()
        yield "target", self.target


def _check_token_text(token: str) -> None:
    if not token:
        raise _fail("the bearer token is empty")
    if any(c.isspace() for c in token):
        raise _fail("the bearer token must not contain spaces or line breaks")


# Add new probe kinds to this union; the discriminator, error messages, PROBE_KINDS and the
# JSON schema all follow from it.
ProbeConfig = Annotated[WebSocketProbeConfig, Field(discriminator="kind")]


def _union_members(annotation: Any) -> list[Any]:
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, UnionType):
        return list(get_args(annotation))
    return [annotation]


def _kind_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind")
    if field is None or get_origin(field.annotation) is not Literal:
        return None
    kind = get_args(field.annotation)[0]
    return kind if isinstance(kind, str) else None


PROBE_KINDS: Final[Mapping[str, type[BaseModel]]] = {
    kind: model for model in _union_members(ProbeConfig) if (kind := _kind_of(model)) is not None
}

_LABEL_NAME_RE: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_LABEL_NAMES: Final = frozenset(
    {
        "probe",
        "kind",
        "target",
        "adapter",
        "reason",
        "code",
        "phase",
        "result",
        "version",
        "python_version",
        "event_loop",
        "le",
        "quantile",
    }
)
_HOSTNAME_RE: Final = re.compile(
    r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?"
)


def split_listen(value: str) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port" / ":port"; raises ValueError with an SRE-facing reason."""
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise ValueError("must be [ipv6-address]:port")
        try:
            IPv6Address(host)
        except ValueError:
            raise ValueError("has an invalid IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9464 or [::1]:9464")
        if ":" in host:
            raise ValueError("IPv6 addresses need brackets, e.g. [::1]:9464")
        if host and not _HOSTNAME_RE.fullmatch(host):
            try:
                IPv4Address(host)
            except ValueError:
                raise ValueError("has an invalid host") from None
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError("needs a port between 0 and 65535")
    return host, int(port_text)


class GlobalConfig(StrictModel):
    listen: str = "127.0.0.1:9464"
    labels: dict[str, str] = Field(
        default_factory=dict,
        json_schema_extra={"propertyNames": {"pattern": f"^{_LABEL_NAME_RE.pattern}$"}},
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # A measurement taken while the event loop lagged more than this is tainted: kept out of the
    # latency histograms so a starved process raises a self-health alert, not a false SLO page.
    loop_lag_threshold: Seconds = 0.05

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        try:
            split_listen(value)
        except ValueError as exc:
            raise _fail(str(exc)) from None
        return value

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        problems: list[Problem] = []
        for name, label_value in value.items():
            if not _LABEL_NAME_RE.fullmatch(name):
                problems.append(((name,), "label names must match [a-zA-Z_][a-zA-Z0-9_]*"))
            elif name.startswith("__"):
                problems.append(
                    ((name,), "label names starting with __ are reserved by Prometheus")
                )
            elif name in ("job", "instance"):
                problems.append(
                    ((name,), "is set by Prometheus on scrape (yours would become exported_*)")
                )
            elif name in RESERVED_LABEL_NAMES:
                problems.append(((name,), "is a label probed sets itself; pick another name"))
            if not label_value:
                # Prometheus treats an empty label as absent: most likely an unset variable.
                problems.append(((name,), "label value must not be empty"))
        if problems:
            raise _problems_error(problems)
        return value

    @property
    def listen_address(self) -> tuple[str, int]:
        """(host, port) to bind; host has no brackets and is "" for all interfaces."""
        return split_listen(self.listen)


class Config(StrictModel):
    # Not `alias`: type checkers would then want Config(global=...), which is not valid Python.
    global_: GlobalConfig = Field(
        default_factory=GlobalConfig, validation_alias="global", serialization_alias="global"
    )
    probes: list[ProbeConfig] = Field(default_factory=list)

    def _semantic_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        first: dict[str, int] = {}
        for index, probe in enumerate(self.probes):
            if probe.name in first:
                problems.append(
                    (
                        ("probes", index, "name"),
                        f'duplicate probe name "{probe.name}" '
                        f"(first used by probes[{first[probe.name]}])",
                    )
                )
            first.setdefault(probe.name, index)
        return problems


# ---------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class ConfigIssue:
    path: str  # "probes[0].connection.keepalive.interval", "global.listen"; "" for the file
    line: int | None  # 1-based line in the YAML file
    message: str


class ConfigError(Exception):
    """A config that must not be used, with every issue found in it."""

    def __init__(self, issues: Iterable[ConfigIssue], source: str = "<config>") -> None:
        self.issues = list(issues)
        self.source = source
        super().__init__(self.issues, source)

    def __str__(self) -> str:
        lines = []
        for issue in self.issues:
            where = self.source if issue.line is None else f"{self.source}:{issue.line}"
            lines.append(
                f"{where}: {issue.path}: {issue.message}"
                if issue.path
                else f"{where}: {issue.message}"
            )
        return "\n".join(lines)


_SIMPLE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")


def _format_path(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _SIMPLE_KEY_RE.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
    return text


# ---------------------------------------------------------------------------------------------
# YAML reading

_MAP_TAG: Final = "tag:yaml.org,2002:map"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"
_STR_TAG: Final = "tag:yaml.org,2002:str"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
# Aliases can expand a small file exponentially ("billion laughs"); no real config comes close.
_MAX_NODES: Final = 200_000
_ENV_REF_RE: Final = re.compile(r"\$(?:(\$)|\{([^}]*)(\})?)")
_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _TooLarge(Exception):
    pass


class _DocumentReader:
    """Turns a composed YAML node tree into plain data, remembering the line of every key and
    list item, expanding ${VAR} in string values and collecting problems as it goes."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.lines: dict[Loc, int] = {}
        self.issues: list[tuple[Loc, int | None, str]] = []
        # Values that could not be read; validation errors at or under them are just echoes.
        self.failed: list[Loc] = []
        # Values that came (partly) from the environment: errors must not echo them.
        self.from_env: list[Loc] = []
        self._constructor = yaml.constructor.SafeConstructor()
        self._active: set[int] = set()
        self._budget = _MAX_NODES

    def read(self, root: yaml.Node) -> Any:
        self.lines[()] = root.start_mark.line + 1
        try:
            return self._value(root, (), self.lines)
        except _TooLarge:
            self.issues.append(((), None, "the document is too large (check for runaway aliases)"))
            return None

    def _problem(self, loc: Loc, node: yaml.Node, message: str) -> None:
        self.issues.append((loc, node.start_mark.line + 1, message))
        self.failed.append(loc)

    def _value(self, node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> Any:
        self._budget -= 1
        if self._budget < 0:
            raise _TooLarge
        if id(node) in self._active:
            self._problem(loc, node, "an alias refers to a value that contains it")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
                return self._mapping(node, loc, lines)
            if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
                items = []
                for index, item in enumerate(node.value):
                    lines[(*loc, index)] = item.start_mark.line + 1
                    items.append(self._value(item, (*loc, index), lines))
                return items
            try:
                value = self._constructor.construct_object(node, deep=True)
            except yaml.YAMLError:
                self._problem(loc, node, f"unsupported YAML tag {node.tag}")
                return None
            if isinstance(value, str) and node.tag == _STR_TAG:
                return self._expand(value, loc, node)
            return value
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, loc: Loc, lines: dict[Loc, int]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merge_sources: list[yaml.MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merge_sources.extend(self._merge_sources(value_node, loc))
                continue
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(loc, key_node, "keys must be plain strings")
                continue
            # Keys as written: every key in the schema is a string, and YAML 1.1 would turn a
            # label called `no` or `on` into a boolean.
            key = str(key_node.value)
            key_loc = (*loc, key)
            if key in first_line:
                self._problem(
                    key_loc, key_node, f"duplicate key (first set on line {first_line[key]})"
                )
            else:
                first_line[key] = key_line
            lines[key_loc] = key_line
            result[key] = self._value(value_node, key_loc, lines)
        # YAML merge keys (<<: *defaults): explicit keys win, then earlier sources win. Lines of
        # merged values point at where they are written, i.e. at the anchor.
        for source in merge_sources:
            source_lines: dict[Loc, int] = {}
            merged = self._value(source, loc, source_lines)
            if not isinstance(merged, dict):
                continue
            for key, value in merged.items():
                if key in result:
                    continue
                result[key] = value
                prefix = (*loc, key)
                for sub_loc, sub_line in source_lines.items():
                    if sub_loc[: len(prefix)] == prefix:
                        lines[sub_loc] = sub_line
        return result

    def _merge_sources(self, node: yaml.Node, loc: Loc) -> list[yaml.MappingNode]:
        if isinstance(node, yaml.MappingNode):
            return [node]
        if isinstance(node, yaml.SequenceNode) and all(
            isinstance(item, yaml.MappingNode) for item in node.value
        ):
            return list(node.value)
        self._problem(loc, node, "a merge key (<<) needs a mapping or a list of mappings")
        return []

    def _expand(self, text: str, loc: Loc, node: yaml.Node) -> str:
        if "$" not in text:
            return text
        problems: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            if match.group(1):
                return "$"
            name = match.group(2)
            if match.group(3) is None:
                problems.append("unterminated ${ (write $$ for a literal $)")
            elif not _ENV_NAME_RE.fullmatch(name):
                problems.append(f'"${{{name}}}" is not a valid environment variable reference')
            elif name not in self.env:
                problems.append(f"environment variable {name} is not set")
            else:
                return self.env[name]
            return match.group(0)

        expanded = _ENV_REF_RE.sub(substitute, text)
        for message in problems:
            self._problem(loc, node, message)
        if any(match.group(2) is not None for match in _ENV_REF_RE.finditer(text)):
            self.from_env.append(loc)
        # On failure keep the text as written (no secret in it) so validation can still run.
        return text if problems else expanded


# ---------------------------------------------------------------------------------------------
# Mapping pydantic errors back to YAML


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional; leave real unions (probe kinds) alone."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if get_origin(annotation) in (Union, UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _key_of(name: str, field: FieldInfo) -> str:
    """The key a field is written as in a config file."""
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    return field.alias or name


def _field_key(model: type[BaseModel], key: str | int) -> Any:
    for name, field in model.model_fields.items():
        if key == _key_of(name, field):
            return field.annotation
    return None


def _resolve(raw_loc: Loc) -> tuple[Loc, type[BaseModel] | None]:
    """Drop the union tags pydantic inserts into locations (('probes', 0, 'websocket', ...))
    and find the model the location ends in, for "did you mean" hints."""
    loc: list[str | int] = []
    current: Any = Config
    for position, part in enumerate(raw_loc):
        current = _unwrap(current)
        if part == "[key]":
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            if _kind_of(current) == part and _field_key(current, part) is None:
                continue
            loc.append(part)
            current = _field_key(current, part)
        elif get_origin(current) in (Union, UnionType):
            members = [m for m in get_args(current) if isinstance(m, type) and _kind_of(m) == part]
            current = members[0] if members else None
            if current is None:
                loc.append(part)
        elif get_origin(current) is list and isinstance(part, int):
            loc.append(part)
            current = get_args(current)[0]
        elif get_origin(current) is dict:
            loc.append(part)
            current = get_args(current)[1]
        else:
            loc.extend(p for p in raw_loc[position:] if p != "[key]")
            return tuple(loc), None
    current = _unwrap(current)
    model = current if isinstance(current, type) and issubclass(current, BaseModel) else None
    return tuple(loc), model


def _known_keys(model: type[BaseModel]) -> list[str]:
    return [_key_of(name, field) for name, field in model.model_fields.items()]


_TYPE_NAMES: Final = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    date: "a date",
    datetime: "a date",
}
_FIXED_MESSAGES: Final = {
    "missing": "required key is missing",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
}


def _message_for(error: Mapping[str, Any], parent: type[BaseModel] | None) -> str:
    """An SRE-facing message built from the error's type and pydantic's text, never its input."""
    kind = error["type"]
    message = _FIXED_MESSAGES.get(kind)
    if kind == "extra_forbidden":
        message = "unknown key"
        key = error["loc"][-1]
        if parent is not None and isinstance(key, str):
            close = get_close_matches(key, _known_keys(parent), n=1, cutoff=0.6)
            if close:
                message += f' (did you mean "{close[0]}"?)'
    elif kind == "string_type":
        # The input's type is named (it explains the error), its value never is.
        message = "expected a string"
        read_as = _TYPE_NAMES.get(type(error.get("input")))
        if read_as:
            message += f"; YAML read this as {read_as}, so quote it"
    elif kind == "literal_error":
        message = f"must be one of {(error.get('ctx') or {}).get('expected', '')}"
    if message is None:
        message = str(error["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(prefix)
        if message.startswith("Input should be"):
            message = "should be" + message.removeprefix("Input should be")
    return message


def _line_of(lines: Mapping[Loc, int], loc: Loc) -> int | None:
    while True:
        if loc in lines:
            return lines[loc]
        if not loc:
            return None
        loc = loc[:-1]


def _validation_issues(
    exc: ValidationError, reader: _DocumentReader
) -> Iterator[tuple[Loc, int | None, str]]:
    lines = reader.lines
    known_kinds = ", ".join(PROBE_KINDS)
    for error in exc.errors(include_url=False):
        loc, _ = _resolve(tuple(error["loc"]))
        kind = error["type"]
        # Input is echoed only where it helps and only if written in the file itself.
        may_echo = not _is_under(loc, reader.from_env)
        if kind == _PROBLEMS_ERROR:
            echo = error["ctx"].get("echo")
            for sub_loc, message in error["ctx"]["problems"]:
                full = (*loc, *sub_loc)
                shown = f"{message} (got {echo})" if echo is not None and may_echo else message
                yield full, _line_of(lines, full), shown
        elif kind == "union_tag_invalid":
            full = (*loc, "kind")
            from_env = _is_under(full, reader.from_env)
            tag = "value" if from_env else _quoted(str(error["ctx"].get("tag", "")))
            yield (
                full,
                _line_of(lines, full),
                f"unknown probe kind {tag}; known kinds: {known_kinds}",
            )
        elif kind == "union_tag_not_found":
            yield (
                (*loc, "kind"),
                _line_of(lines, loc),
                f"required key is missing; known kinds: {known_kinds}",
            )
        elif kind == "missing":
            # The key is not in the file, so point at the mapping that should hold it.
            yield loc, _line_of(lines, loc[:-1]), _message_for(error, None)
        else:
            parent = _resolve(tuple(error["loc"])[:-1])[1] if kind == "extra_forbidden" else None
            yield loc, _line_of(lines, loc), _message_for(error, parent)


def _yaml_issue(exc: yaml.YAMLError, text: str) -> ConfigIssue:
    if isinstance(exc, yaml.MarkedYAMLError):
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        message = f"invalid YAML: {exc.problem or exc.context or 'syntax error'}"
        if exc.problem and exc.context:
            context_line = exc.context_mark.line + 1 if exc.context_mark is not None else None
            where = f" started on line {context_line}" if context_line not in (None, line) else ""
            message += f" ({exc.context}{where})"
        return ConfigIssue("", line, message)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, int(exc.position)) + 1
        return ConfigIssue("", line, f"invalid YAML: {exc.reason}: character #x{exc.character:04x}")
    return ConfigIssue("", None, f"invalid YAML: {exc}")


def _is_under(loc: Loc, roots: Sequence[Loc]) -> bool:
    return any(loc[: len(root)] == root for root in roots)


def parse_config(
    text: str,
    source: str = "<config>",
    env: Mapping[str, str] | None = None,
    *,
    base_dir: Path | None = None,
) -> Config:
    """Parse and validate a YAML config. Raises ConfigError listing every problem found.

    base_dir anchors relative file paths (load_config passes the config file's directory);
    without it they are relative to the working directory.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_issue(exc, text)], source) from None
    reader = _DocumentReader(os.environ if env is None else env)
    data = {} if root is None else reader.read(root)
    raw_issues = list(reader.issues)
    if data is None and not raw_issues:
        data = {}  # a file holding only comments or a bare "---"
    config: Config | None = None
    if isinstance(data, dict):
        try:
            config = Config.model_validate(
                data, by_alias=True, by_name=False, context=_LoadContext(base_dir)
            )
        except ValidationError as exc:
            raw_issues.extend(
                issue
                for issue in _validation_issues(exc, reader)
                if not _is_under(issue[0], reader.failed)
            )
    elif not raw_issues:
        line = root.start_mark.line + 1 if root is not None else None
        raw_issues.append(
            ((), line, "the config must be a mapping (with global: and probes: keys)")
        )
    if raw_issues or config is None:
        issues = [
            ConfigIssue(_format_path(loc), line, message) for loc, line, message in raw_issues
        ]
        # File order, the order an operator fixes them in.
        issues.sort(key=lambda issue: (issue.line is None, issue.line or 0))
        raise ConfigError(issues, source)
    return config


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file. Raises ConfigError, also when the file can't be read."""
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue("", None, f"cannot read the config file: {exc.strerror or exc}")], source
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([ConfigIssue("", line, "the file is not UTF-8 text")], source) from None
    return parse_config(text, source, env, base_dir=path.parent)


class _SchemaGenerator(GenerateJsonSchema):
    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        # Show duration defaults the way they are written in a config ("15s"), not as floats
        # that the schema's own pattern would reject.
        default = json_schema.get("default")
        if json_schema.get("pattern") == DURATION_PATTERN and isinstance(default, float):
            json_schema["default"] = format_duration(default)
        return json_schema


def config_json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of the config file, for editors and `probed check --schema`."""
    schema = Config.model_json_schema(
        by_alias=True, mode="validation", schema_generator=_SchemaGenerator
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "probed configuration",
    }
