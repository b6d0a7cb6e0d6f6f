"""The webrtc probe kind: an aiortc peer over WHIP, timed set-up, RTCP figures and audio round trip.

Nothing here imports aiortc: `probed check` validates a webrtc config on a machine without the
webrtc extra and says plainly that the extra is missing (the daemon could not run the probe).
"""

import importlib.util
from typing import Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from probed.config.durations import Seconds, format_duration
from probed.config.schema.base import ProbeConfig
from probed.config.schema.common import ReconnectConfig
from probed.config.schema.endpoint import HttpEndpoint
from probed.config.schema.strict import StrictModel
from probed.config.validation import Problem, _fail

# The known signal (a 100 ms chirp) and its echo window must fit between two signals.
SIGNAL_SECONDS: Final = 0.1
# Codec names as aiortc spells their MIME subtypes.
CODECS: Final = ("opus", "PCMU", "PCMA", "G722")
# What the webrtc extra brings that the probe needs; checked without importing them.
_EXTRA_MODULES: Final = ("aiortc", "av", "numpy")


def webrtc_extra_missing() -> list[str]:
    """The webrtc extra's modules that cannot be imported here (empty when it is installed)."""
    missing = []
    for module in _EXTRA_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a module blocked in sys.modules reads as missing
            found = False
        if not found:
            missing.append(module)
    return missing


class IceServerConfig(StrictModel):
    """A STUN or TURN server, as in RTCIceServer; TURN relays media through restrictive NATs."""

    urls: list[str] = Field(min_length=1, description="stun:host:port, turn:host:port, turns:...")
    username: str | None = Field(default=None, description="TURN: the user name")
    credential: SecretStr | None = Field(
        default=None, description='TURN: the password, a secret; e.g. "${TURN_PASSWORD}"'
    )

    @field_validator("urls", mode="before")
    @classmethod
    def _one_url(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            scheme = url.partition(":")[0].lower()
            if scheme not in ("stun", "stuns", "turn", "turns") or not url.partition(":")[2]:
                raise _fail("each must be a stun:, stuns:, turn: or turns: URL")
            if any(c.isspace() for c in url):
                raise _fail("must not contain spaces")
        return value

    def _semantic_problems(self) -> list[Problem]:
        turn = any(u.lower().startswith("turn") for u in self.urls)
        if turn and (self.username is None or self.credential is None):
            return [((), "a TURN server needs username and credential")]
        return []


class WebRtcSloConfig(StrictModel):
    # Two one-way legs of ITU-T G.114's 150 ms mouth-to-ear target for interactive speech: past
    # about 300 ms round trip callers start talking over the service.
    roundtrip: Seconds = Field(
        default=0.3, description="audio round trip, known signal out to its echo back"
    )


class WebRtcProbeConfig(HttpEndpoint, ProbeConfig):
    kind: Literal["webrtc"]
    # WHIP's POST carries the SDP offer: its content type is the protocol's, not the user's.
    _PROTOCOL_HEADERS = HttpEndpoint._PROTOCOL_HEADERS | {"content-type"}

    ice_servers: list[IceServerConfig] = Field(
        default_factory=list,
        description="STUN/TURN servers; empty: host candidates only",
    )
    interval: Seconds = Field(default=1.0, description="one known signal every interval")
    timeout: Seconds = Field(
        default=0.8, description="an echo later than this after its signal: no_echo"
    )
    min_correlation: float = Field(
        default=0.6,
        ge=0.1,
        le=0.99,
        description="normalised correlation an echo must reach to count (a noisy match is dropped)",
    )
    codecs: list[Literal["opus", "PCMU", "PCMA", "G722"]] = Field(
        default_factory=list, description="offer only these, in this order (default: aiortc's)"
    )
    connect_timeout: Seconds = Field(default=10.0, description="offer to connected, at most")
    request_timeout: Seconds = Field(default=5.0, description="each WHIP POST and DELETE")
    media_timeout: Seconds = Field(
        default=3.0, description="no audio from the far end for this long: the session stalled"
    )
    reconnect: ReconnectConfig = Field(
        default=ReconnectConfig(),
        description="backoff between set-up attempts, as for WebSocket sessions",
    )
    churn: Seconds | None = Field(
        default=None, description="end the session after this long and set up a new one"
    )
    slo: WebRtcSloConfig = Field(
        default=WebRtcSloConfig(), description="the audio round trip's SLO threshold"
    )
    # Inherited from the HTTP endpoint but refused here (see _semantic_problems).
    proxy_url: SecretStr | None = Field(
        default=None, description="not supported: media goes over ICE (use a TURN server)"
    )
    proxy_from_env: bool = Field(default=False, description="not supported, as proxy_url")

    @field_validator("churn")
    @classmethod
    def _check_churn(cls, value: float | None) -> float | None:
        if value is not None and value < 1.0:
            raise _fail("must be at least 1s")
        return value

    @field_validator("codecs")
    @classmethod
    def _check_codecs(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise _fail("lists a codec twice")
        return value

    def _semantic_problems(self) -> list[Problem]:
        problems = super()._semantic_problems()
        missing = webrtc_extra_missing()
        if missing:
            problems.append(
                (
                    ("kind",),
                    f"the webrtc kind needs the webrtc extra ({', '.join(missing)} not "
                    "installed): pip install 'probed[webrtc]'",
                )
            )
        if self.timeout + SIGNAL_SECONDS >= self.interval:
            problems.append(
                (
                    ("timeout",),
                    f"plus the {format_duration(SIGNAL_SECONDS)} signal must be shorter than "
                    f"interval ({format_duration(self.interval)}): one echo is looked for "
                    "before the next signal leaves",
                )
            )
        if self.slo.roundtrip > self.timeout:
            problems.append(
                (
                    ("slo", "roundtrip"),
                    f"must not be longer than timeout ({format_duration(self.timeout)}): a "
                    "later echo is not measured",
                )
            )
        if self.proxy_url is not None or self.proxy_from_env:
            problems.append(
                (
                    ("proxy_url" if self.proxy_url is not None else "proxy_from_env",),
                    "not supported by the webrtc kind: media goes over ICE, not HTTP "
                    "(a TURN server in ice_servers relays it)",
                )
            )
        if self.tls.server_name is not None:
            problems.append((("tls", "server_name"), "not supported by the webrtc kind"))
        if urlsplit(self.url).username is not None:
            problems.append((("url",), "must not hold user:password@; use bearer_token"))
        return problems

    def slo_thresholds(self) -> tuple[float, ...]:
        return (self.slo.roundtrip,)

    @property
    def codec_mime_types(self) -> list[str]:
        return [f"audio/{name}" for name in self.codecs]
