"""The echo probe kind: a held WebSocket session with request/reply latency."""

import re
from collections.abc import Iterator
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator
from pydantic_core import PydanticCustomError

from probed.config.durations import Seconds, _to_ns, format_duration
from probed.config.schema.common import (
    ConnectionConfig,
    MessageConfig,
    ReadableFile,
    SloConfig,
    StrictModel,
    TlsConfig,
)
from probed.config.validation import Problem, _fail, _problems_error

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


class EchoProbeConfig(StrictModel):
    kind: Literal["echo"]
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
