"""WebSocketEndpoint: where and how to connect, one block a probe can hold one or several of.

URL, handshake headers, bearer token, subprotocols, TLS, proxy and connection settings, with
their validators and the only place secrets leave their wrappers (`request_headers`).
"""

import re
import urllib.request
from collections.abc import Iterator
from typing import Any, ClassVar, Final
from urllib.parse import unquote, urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator
from pydantic_core import PydanticCustomError

from probed.config.files import FileRefused, read_secret
from probed.config.schema.common import ConnectionConfig, ReadableFile, TlsConfig
from probed.config.schema.framing import FramingConfig
from probed.config.schema.scripting import SetupStepConfig, check_steps
from probed.config.schema.strict import StrictModel
from probed.config.validation import Problem, _fail, _problems_error

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


def url_target(url: str) -> str:
    """scheme://host[:port]/path of a URL: nothing that may be secret (userinfo, query)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path or '/'}"


class Endpoint(StrictModel):
    """What every endpoint has: a URL, headers and a bearer token, TLS and a proxy.

    Subclasses name their URL schemes and the headers the protocol writes itself.
    """

    _SCHEMES: ClassVar[tuple[str, str]]  # (plain, secure)
    _PROTOCOL_HEADERS: ClassVar[frozenset[str]] = frozenset()
    _HEADERS_WRITER: ClassVar[str] = "the protocol"

    # Not in repr: a URL can carry credentials (userinfo, ?key=...). `target` is the safe form.
    url: str = Field(
        repr=False, description="the URL; labels and logs show it without credentials or query"
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="extra request headers; values are secrets (never logged)",
    )
    bearer_token: SecretStr | None = Field(
        default=None, description='sent as "Authorization: Bearer ..."; e.g. "${TOKEN}"'
    )
    bearer_token_file: ReadableFile | None = Field(
        default=None,
        description="file holding the bearer token, read at load and on reload",
    )
    tls: TlsConfig = Field(default=TlsConfig(), description="TLS options (secure URLs only)")
    proxy_url: SecretStr | None = Field(
        default=None,
        description="HTTP(S) CONNECT proxy, http://[user:password@]host:port",
    )
    proxy_from_env: bool = Field(
        default=False,
        description="use HTTPS_PROXY / HTTP_PROXY and NO_PROXY from the environment",
    )

    # Read at load so a missing token fails `probed check`, not the first connect at 3 am. Being
    # private state it still takes part in ==, so a rotated token counts as a changed probe.
    _file_token: SecretStr | None = PrivateAttr(default=None)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # Messages here never quote the URL: it may hold credentials.
        plain, secure = cls._SCHEMES
        schemes = f"{plain}:// or {secure}://"
        if not value or any(c.isspace() for c in value):
            raise _fail(f"must be a {schemes} URL without spaces")
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            raise _fail("is not a valid URL (check the host and port)") from None
        if parts.scheme not in cls._SCHEMES:
            raise _fail(f"must be a {schemes} URL")
        if not parts.hostname:
            raise _fail("has no host")
        if port == 0:
            raise _fail("has an invalid port")
        if parts.fragment:
            raise _fail("must not have a #fragment (it is never sent to the server)")
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
            elif lowered in cls._PROTOCOL_HEADERS:
                hint = "; use subprotocols" if lowered == "sec-websocket-protocol" else ""
                problems.append(((name,), f"is set by {cls._HEADERS_WRITER}{hint}"))
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

    @field_validator("proxy_url")
    @classmethod
    def _check_proxy_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        text = value.get_secret_value()
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            raise _fail("is not a valid URL (check the host and port)") from None
        if parts.scheme != "http":
            raise _fail("must be an http:// proxy URL (the probe speaks CONNECT to it)")
        if not parts.hostname or port == 0:
            raise _fail("needs a host (and a port other than 0)")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise _fail("must be http://[user:password@]host:port with nothing after the port")
        return value

    def _semantic_problems(self) -> list[Problem]:
        problems: list[Problem] = list(super()._semantic_problems())
        if self.bearer_token is not None and self.bearer_token_file is not None:
            problems.append(
                (("bearer_token_file",), "set bearer_token or bearer_token_file, not both")
            )
        elif self.bearer_token_file is not None:
            try:
                token = read_secret(self.bearer_token_file).decode("utf-8").strip()
                _check_token_text(token)
                self._file_token = SecretStr(token)
            except FileRefused as exc:
                problems.append((("bearer_token_file",), str(exc)))
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not UTF-8 text"
                problems.append((("bearer_token_file",), f"cannot read the token: {reason}"))
            except PydanticCustomError as exc:
                problems.append((("bearer_token_file",), exc.message()))
        has_token = self.bearer_token is not None or self.bearer_token_file is not None
        if has_token:
            for name in self.headers:
                if name.lower() == "authorization":
                    problems.append(
                        (
                            ("headers", name),
                            "conflicts with bearer_token/bearer_token_file; keep one",
                        )
                    )
        parts = urlsplit(self.url)
        if has_token and (parts.username is not None or parts.password is not None):
            # websockets turns URL userinfo into Basic auth, which would replace the bearer
            # token: the server sees one of them and answers 401 for no visible reason.
            problems.append(
                (("url",), "has user:password@ and a bearer token is set too; keep one")
            )
        if self.tls != TlsConfig() and parts.scheme != self._SCHEMES[1]:
            problems.append((("tls",), f"tls options need a {self._SCHEMES[1]}:// url"))
        if self.proxy_url is not None and self.proxy_from_env:
            problems.append((("proxy_from_env",), "set proxy_url or proxy_from_env, not both"))
        return problems

    def request_headers(self) -> dict[str, str]:
        """The handshake headers in plain text: the one place secrets leave their wrappers."""
        headers = {name: value.get_secret_value() for name, value in self.headers.items()}
        token = self.bearer_token or self._file_token
        if token is not None:
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        return headers

    def proxy(self) -> str | None:
        """The CONNECT proxy to dial through, if any (read from the environment when asked)."""
        if self.proxy_url is not None:
            return self.proxy_url.get_secret_value()
        if not self.proxy_from_env:
            return None
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        # NO_PROXY as curl and requests read it; typeshed does not list the function.
        if urllib.request.proxy_bypass_environment(host):  # type: ignore[attr-defined]
            return None
        found = urllib.request.getproxies_environment()
        secure = parts.scheme == self._SCHEMES[1]
        return found.get("https" if secure else "http") or found.get("https")

    @property
    def target(self) -> str:
        """The URL for labels and logs: scheme://host[:port]/path, nothing that may be secret."""
        return url_target(self.url)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        yield from super().__repr_args__()
        yield "target", self.target


class WebSocketEndpoint(Endpoint):
    _SCHEMES = ("ws", "wss")
    _PROTOCOL_HEADERS = _HANDSHAKE_HEADERS
    _HEADERS_WRITER = "the WebSocket handshake"

    url: str = Field(
        repr=False,
        json_schema_extra={"pattern": "^[wW][sS][sS]?://"},
        description="ws:// or wss:// URL; labels and logs show it without credentials or query",
    )
    subprotocols: list[str] = Field(
        default_factory=list, description="WebSocket subprotocols to offer"
    )
    framing: FramingConfig | None = Field(
        default=None, description="a preset wire format: socketio or graphql_ws"
    )
    setup: list[SetupStepConfig] = Field(
        default_factory=list,
        description="scripted steps after the upgrade (join, auth): timed as the setup phase",
    )
    connection: ConnectionConfig = Field(
        default=ConnectionConfig(),
        description="connect deadline, keepalive, reconnect backoff, churn",
    )

    def _semantic_problems(self) -> list[Problem]:
        problems = super()._semantic_problems()
        found, _ = check_steps(self.setup, {"probe"})
        problems.extend((("setup", *loc), message) for loc, message in found)
        if self.framing is not None and self.framing.protocol == "socketio":
            query = urlsplit(self.url).query
            if "EIO=4" not in query or "transport=websocket" not in query:
                problems.append(
                    (
                        ("url",),
                        "Socket.IO needs its Engine.IO URL, e.g. "
                        "ws://host/socket.io/?EIO=4&transport=websocket",
                    )
                )
        return problems

    @property
    def captures(self) -> set[str]:
        """Template variables the setup steps define, for the probe's own templates."""
        return check_steps(self.setup, set())[1]

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


class HttpEndpoint(Endpoint):
    _SCHEMES = ("http", "https")
    # aiohttp writes these from the request itself; a second copy would contradict it.
    _PROTOCOL_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
    _HEADERS_WRITER = "the HTTP client"

    url: str = Field(
        repr=False,
        json_schema_extra={"pattern": "^[hH][tT][tT][pP][sS]?://"},
        description="http:// or https:// URL; labels and logs show it without credentials or query",
    )


def proxy_credentials(proxy_url: str) -> tuple[str, str] | None:
    """(user, password) from a proxy URL's userinfo, percent-decoded, or None."""
    parts = urlsplit(proxy_url)
    if parts.username is None:
        return None
    return unquote(parts.username), unquote(parts.password or "")


def _check_token_text(token: str) -> None:
    if not token:
        raise _fail("the bearer token is empty")
    if any(c.isspace() for c in token):
        raise _fail("the bearer token must not contain spaces or line breaks")
