"""What every speech adapter offers, and the strict JSON reading they share.

Adapters are sans-I/O: they build requests and messages and turn received frames into events,
and never touch a socket, a clock or a metric. The probe (or a test) does the I/O.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

from probed.adapters.events import MAX_SHORT, Event, clip_text
from probed.audio.encoding import Encoding

Wire = str | bytes
AdapterErrorReason = Literal["bad_json", "not_object", "bad_field", "bad_encoding", "bad_frame"]


class AdapterError(Exception):
    """A frame the adapter cannot make sense of. `reason` is bounded (a metric label)."""

    def __init__(self, reason: AdapterErrorReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: AdapterErrorReason = reason
        self.detail = detail


@dataclass(frozen=True)
class ConnectRequest:
    """The WebSocket upgrade to make. Headers may hold credentials: never log them."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    subprotocols: Sequence[str] = ()
    # False when the provider answers WebSocket pings too slowly for the library's defaults
    # (Gemini Live: 8-30 s), so the dialer must not send them or it closes its own session.
    library_pings: bool = True

    @property
    def safe_url(self) -> str:
        """The URL without its query (which may carry a token), for logs and labels."""
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def with_query(base: str, params: Mapping[str, str | int | float | bool | None]) -> str:
    """`base` with `params` appended; booleans as true/false, None left out."""
    clean = {
        k: ("true" if v else "false") if isinstance(v, bool) else str(v)
        for k, v in params.items()
        if v is not None
    }
    if not clean:
        return base
    joiner = "&" if urlsplit(base).query else "?"
    return f"{base}{joiner}{urlencode(clean)}"


class SpeechAdapter(ABC):
    """One provider's streaming speech-to-text protocol, for one session.

    `parse` keeps the turn state it needs (e.g. Deepgram's finalised pieces); `new_turn` clears
    it before each utterance on a held session.
    """

    name: str
    sample_rate: int
    chunk_ms: int
    encoding: Encoding
    # Providers without a ready message (Deepgram) are ready once the upgrade succeeds.
    ready_on_open: bool = False
    keepalive_interval: float | None = None

    @abstractmethod
    def connect_request(self) -> ConnectRequest: ...

    def setup_messages(self) -> list[Wire]:
        return []

    @abstractmethod
    def audio_message(self, chunk: bytes) -> Wire: ...

    def flush_message(self) -> Wire | None:
        """Sent right after the end of speech in flush mode: finalise what you have now."""
        return None

    def keepalive_message(self) -> Wire | None:
        return None

    def close_messages(self) -> list[Wire]:
        """Sent before closing the WebSocket, so the provider ends the session cleanly."""
        return []

    def new_turn(self) -> None:  # noqa: B027 - most providers keep no turn state
        """Forget the previous utterance's turn state."""

    @abstractmethod
    def parse(self, data: Wire) -> list[Event]:
        """The events in one received frame. Raises nothing but AdapterError."""


# -- strict JSON reading ----------------------------------------------------------------------

JsonObject = dict[str, object]


def decode_object(data: Wire) -> JsonObject:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise AdapterError("bad_encoding", "frame is not UTF-8") from None
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, RecursionError, ValueError):
        raise AdapterError("bad_json", "frame is not JSON") from None
    if not isinstance(value, dict):
        raise AdapterError("not_object", f"frame is a JSON {type(value).__name__}")
    return value


def opt_str(obj: Mapping[str, object], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise AdapterError("bad_field", f"{key!r} is not a string")
    return value


def opt_bool(obj: Mapping[str, object], key: str) -> bool:
    value = obj.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise AdapterError("bad_field", f"{key!r} is not a boolean")
    return value


def opt_number(obj: Mapping[str, object], key: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AdapterError("bad_field", f"{key!r} is not a number")
    try:
        return float(value)
    except OverflowError:
        raise AdapterError("bad_field", f"{key!r} is out of range") from None


def opt_object(obj: Mapping[str, object], key: str) -> JsonObject | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise AdapterError("bad_field", f"{key!r} is not an object")
    return value


def opt_list(obj: Mapping[str, object], key: str) -> list[object]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise AdapterError("bad_field", f"{key!r} is not a list")
    return value


def code_text(value: object) -> str:
    """An error code as text, whatever JSON type the provider used."""
    if isinstance(value, str | int) and not isinstance(value, bool):
        return clip_text(str(value), MAX_SHORT)
    return "unknown"


def type_name(obj: Mapping[str, object], key: str = "type") -> str:
    value = obj.get(key)
    return clip_text(value, MAX_SHORT) if isinstance(value, str) else f"<{type(value).__name__}>"
