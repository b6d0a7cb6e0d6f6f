"""The protected HTTP endpoint: TLS, client certificates and basic auth from a web config file.

The file has the format of Prometheus' exporter-toolkit (`--web.config.file`), so the file an SRE
already writes for node_exporter works here:

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
      client_ca_file: clients-ca.crt
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...                          # bcrypt hash

It is read once at start (a restart applies changes). Passwords are checked with bcrypt in a
worker thread, a few at a time, and a verified pair is remembered (as a salted digest), so a
flood of bad logins costs bounded CPU and a scrape every 15 s costs one bcrypt per restart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from aiohttp import web
from pydantic import Field, SecretStr, ValidationError

from probed.config.errors import ConfigError, ConfigIssue, _line_of, _message_for
from probed.config.schema.common import ReadableFile
from probed.config.schema.strict import StrictModel
from probed.config.validation import Problem, _format_path, _LoadContext
from probed.config.yaml_reader import BoundedLoader, _DocumentReader

_MAX_FILE_BYTES: Final = 64 * 1024
# Python's ssl cannot ask for a client certificate without verifying it, so the two
# exporter-toolkit modes that accept any certificate unverified are refused, not weakened.
_CLIENT_AUTH: Final = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_VERSIONS: Final = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_VERIFIED_KEPT: Final = 64
_CONCURRENT_CHECKS: Final = 2


class TlsServerConfig(StrictModel):
    cert_file: ReadableFile
    key_file: ReadableFile
    client_auth_type: Literal[
        "NoClientCert",
        "RequestClientCert",
        "RequireAnyClientCert",
        "VerifyClientCertIfGiven",
        "RequireAndVerifyClientCert",
    ] = "NoClientCert"
    client_ca_file: ReadableFile | None = None
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"

    def _semantic_problems(self) -> list[Problem]:
        if self.client_auth_type not in _CLIENT_AUTH:
            return [
                (
                    ("client_auth_type",),
                    f"{self.client_auth_type} (accepting unverified client certificates) is "
                    "not supported; use VerifyClientCertIfGiven or RequireAndVerifyClientCert",
                )
            ]
        if self.client_auth_type != "NoClientCert" and self.client_ca_file is None:
            return [(("client_ca_file",), f"required with {self.client_auth_type}")]
        return []

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = _TLS_VERSIONS[self.min_version]
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        ctx.verify_mode = _CLIENT_AUTH[self.client_auth_type]
        if self.client_ca_file is not None:
            ctx.load_verify_locations(cafile=str(self.client_ca_file))
        return ctx


class WebConfig(StrictModel):
    tls_server_config: TlsServerConfig | None = None
    basic_auth_users: dict[str, SecretStr] = Field(default_factory=dict)

    def _semantic_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        for user, hashed in self.basic_auth_users.items():
            if ":" in user:
                problems.append((("basic_auth_users", user), "user names cannot contain ':'"))
            if not hashed.get_secret_value().startswith(("$2a$", "$2b$", "$2y$")):
                problems.append((("basic_auth_users", user), "must be a bcrypt hash ($2y$...)"))
        return problems


def load_web_config(path: str | Path) -> WebConfig:
    """Read and validate a web config file; ConfigError (with lines) on any problem."""
    path = Path(path)
    source = str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_FILE_BYTES + 1)
        if len(raw) > _MAX_FILE_BYTES:
            raise ConfigError([ConfigIssue("", None, "larger than 64 KiB")], source)
        text = raw.decode("utf-8")
        root = yaml.compose(text, Loader=BoundedLoader)
    except OSError as exc:
        issue = ConfigIssue("", None, f"cannot read the web config: {exc.strerror or exc}")
        raise ConfigError([issue], source) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue("", None, "the file is not UTF-8 text")], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue("", None, f"invalid YAML: {exc}")], source) from None
    reader = _DocumentReader(os.environ)
    data: Any = {} if root is None else reader.read(root)
    issues = [ConfigIssue(_format_path(loc), line, msg) for loc, line, msg in reader.issues]
    if issues:
        raise ConfigError(issues, source)
    try:
        return WebConfig.model_validate(data or {}, context=_LoadContext(path.parent))
    except ValidationError as exc:
        found = []
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            if error["type"] == "probed_config":
                for sub, message in error["ctx"]["problems"]:
                    full = (*loc, *sub)
                    found.append(
                        ConfigIssue(_format_path(full), _line_of(reader.lines, full), message)
                    )
            else:
                found.append(
                    ConfigIssue(
                        _format_path(loc), _line_of(reader.lines, loc), _message_for(error, None)
                    )
                )
        raise ConfigError(found, source) from None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BasicAuth:
    """aiohttp middleware checking `basic_auth_users`."""

    def __init__(self, users: dict[str, SecretStr]) -> None:
        self._users = {name: h.get_secret_value().encode() for name, h in users.items()}
        self._salt = os.urandom(16)
        self._verified: dict[str, bytes] = {}
        self._checks = asyncio.Semaphore(_CONCURRENT_CHECKS)
        # Unknown users are checked against this, so a wrong name costs as long as a wrong
        # password and does not tell an attacker which names exist.
        self._decoy = next(iter(self._users.values()), b"")

    def _digest(self, user: str, password: bytes) -> bytes:
        return hmac.new(self._salt, user.encode() + b"\0" + password, hashlib.sha256).digest()

    async def allowed(self, header: str | None) -> bool:
        import bcrypt

        if not header or not header.startswith("Basic "):
            return False
        try:
            user, sep, password = base64.b64decode(header[6:], validate=True).partition(b":")
            name = user.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        digest = self._digest(name, password)
        known = self._verified.get(name)
        if known is not None and hmac.compare_digest(known, digest):
            return True
        hashed = self._users.get(name, self._decoy)
        async with self._checks:
            ok = await asyncio.to_thread(bcrypt.checkpw, password, hashed)
        ok = ok and name in self._users
        if ok:
            if len(self._verified) >= _VERIFIED_KEPT:
                self._verified.clear()
            self._verified[name] = digest
        return ok

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if await self.allowed(request.headers.get("Authorization")):
            return await handler(request)
        return web.Response(
            status=401,
            text="unauthorized\n",
            headers={"WWW-Authenticate": 'Basic realm="probed"'},
        )
