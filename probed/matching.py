"""Reply filters: which inbound messages are replies, which are ignored, and what to capture.

Everything here is pure and bounded, because it runs on whatever a peer sends: a hostile or
broken server can make a message classified as ignored with a reason from a fixed set, never
raise anything else, never recurse without bound and never run an unbounded regex.

Dotted path syntax
------------------
A path names one value inside a decoded JSON message: ``a.b.0.c`` is ``msg["a"]["b"][0]["c"]``.

- Segments are separated by ``.``; a segment that is all digits indexes a list (``0`` is the first
  element) and is an ordinary key when the value is an object (``{"0": ...}``).
- A key that contains a dot or a backslash escapes it with a backslash: ``headers.x\\.request\\.id``
  is ``msg["headers"]["x.request.id"]`` (in YAML, single quotes keep the backslash as written:
  ``'headers.x\\.request\\.id'``).
- An empty path, an empty segment (``a..b``), a trailing lone backslash or a backslash before any
  other character is a configuration error.

A path that runs into a missing key, an index past the end or a scalar is *missing*, which is
different from a present JSON ``null``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeAlias

import re2  # type: ignore[import-untyped]  # google-re2 ships no type information

JSON: TypeAlias = Any  # a value json.loads can return; Any keeps the recursive type usable

DEFAULT_MAX_BYTES: Final = 1 << 20
DEFAULT_MAX_DEPTH: Final = 64
MAX_PATTERN_CHARS: Final = 256
# A regex is only tried on strings up to this long: the pattern is bounded, but backtracking
# time also grows with the subject, and the subject comes from the peer.
MAX_REGEX_SUBJECT_CHARS: Final = 4096
# Patterns run on RE2, whose matching time is linear in the subject: with Python's backtracking
# engine a pattern such as ^(\w+\s?)+$ takes seconds on forty characters a server chose, with
# the event loop stopped. RE2 has no backreferences or lookarounds; such a pattern is a config
# error. Its errors are raised here, not also logged to stderr.
_RE2_OPTIONS: Final = re2.Options()
_RE2_OPTIONS.log_errors = False
MAX_PATH_CHARS: Final = 512

DecodeReason: TypeAlias = Literal["not_json", "too_large", "too_deep"]
IgnoreReason: TypeAlias = Literal[
    "not_json", "too_large", "too_deep", "filtered", "missing_field", "bad_id"
]
IGNORE_REASONS: Final[tuple[IgnoreReason, ...]] = (
    "not_json",
    "too_large",
    "too_deep",
    "filtered",
    "missing_field",
    "bad_id",
)


# -- bounded JSON decoding ----------------------------------------------------------------------


class DecodeError(Exception):
    """A message that is not acceptable JSON; ``reason`` is one of a fixed set."""

    def __init__(self, reason: DecodeReason) -> None:
        super().__init__(reason)
        self.reason: DecodeReason = reason


def _reject_constant(name: str) -> None:
    # NaN and Infinity are not JSON; accepting them would let a peer smuggle floats no other
    # JSON parser reads back.
    raise ValueError(f"{name} is not JSON")


# One decoder for every message: json.loads with any keyword builds a new decoder per call,
# which more than doubled the cost of decoding a small message.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def decode_json(
    data: str | bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> JSON:
    """Decode one message, refusing what is too large or nested too deep.

    The size bound is on the message as received: bytes for a binary frame, characters for a
    text frame. Raises only DecodeError.
    """
    if len(data) > max_bytes:
        raise DecodeError("too_large")
    try:
        text = data if isinstance(data, str) else data.decode(json.detect_encoding(data))
        value = _DECODER.decode(text)
    except RecursionError:
        raise DecodeError("too_deep") from None
    except (ValueError, TypeError):
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; so is the int-digits limit.
        raise DecodeError("not_json") from None
    if (
        isinstance(value, dict | list)
        and _brackets(data) > max_depth
        and _too_deep(value, max_depth)
    ):
        raise DecodeError("too_deep")
    return value


def _brackets(data: str | bytes) -> int:
    # The nesting depth cannot exceed the number of opening brackets (strings included, which
    # only overcounts), so most messages skip the walk entirely.
    if isinstance(data, str):
        return data.count("{") + data.count("[")
    return data.count(b"{") + data.count(b"[")


def _too_deep(value: JSON, max_depth: int) -> bool:
    # Iterative, so that the check itself cannot hit the recursion limit.
    stack: list[tuple[JSON, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


# -- paths --------------------------------------------------------------------------------------


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


@dataclass(frozen=True, slots=True)
class JsonPath:
    """A compiled dotted path; see the module docstring for the syntax."""

    text: str
    segments: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> JsonPath:
        if not text:
            raise ValueError("path is empty")
        if len(text) > MAX_PATH_CHARS:
            raise ValueError(f"path is longer than {MAX_PATH_CHARS} characters")
        segments: list[str] = []
        current: list[str] = []
        chars = iter(text)
        for ch in chars:
            if ch == "\\":
                nxt = next(chars, None)
                if nxt not in (".", "\\"):
                    raise ValueError(
                        f"path {text!r}: a backslash may only escape '.' or '\\' in a key"
                    )
                current.append(nxt)
            elif ch == ".":
                segments.append("".join(current))
                current = []
            else:
                current.append(ch)
        segments.append("".join(current))
        if any(not s for s in segments):
            raise ValueError(f"path {text!r} has an empty segment")
        return cls(text, tuple(segments))

    def get(self, obj: JSON) -> JSON:
        """The value at this path, or MISSING."""
        for key in self.segments:
            if isinstance(obj, dict):
                if key not in obj:
                    return MISSING
                obj = obj[key]
            elif isinstance(obj, list) and key.isdigit() and key.isascii():
                index = int(key)
                if index >= len(obj):
                    return MISSING
                obj = obj[index]
            else:
                return MISSING
        return obj

    def __str__(self) -> str:
        return self.text


def as_path(path: str | JsonPath) -> JsonPath:
    return path if isinstance(path, JsonPath) else JsonPath.parse(path)


def json_equal(a: JSON, b: JSON) -> bool:
    """Equality as JSON sees it: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return False


def text_of(value: JSON) -> str:
    """A JSON value as template text: strings as they are, everything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# -- conditions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Equals:
    path: JsonPath
    value: JSON

    def holds(self, msg: JSON) -> bool:
        found = self.path.get(msg)
        return found is not MISSING and json_equal(found, self.value)


@dataclass(frozen=True, slots=True)
class OneOf:
    path: JsonPath
    values: tuple[JSON, ...]

    def holds(self, msg: JSON) -> bool:
        found = self.path.get(msg)
        return found is not MISSING and any(json_equal(found, v) for v in self.values)


class _Pattern(Protocol):
    def search(self, text: str) -> object | None: ...


@dataclass(frozen=True, slots=True)
class Regex:
    """A search on a string field (anchor with ``^``/``$`` to match the whole value), in RE2
    syntax: Python's, less backreferences and lookarounds.

    Non-string values and strings longer than MAX_REGEX_SUBJECT_CHARS never match.
    """

    path: JsonPath
    pattern: str
    compiled: _Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.pattern) > MAX_PATTERN_CHARS:
            raise ValueError(f"regex is longer than {MAX_PATTERN_CHARS} characters")
        try:
            compiled = re2.compile(self.pattern, options=_RE2_OPTIONS)
        except re2.error as exc:
            why = exc.args[0] if exc.args else "invalid"
            if isinstance(why, bytes):
                why = why.decode(errors="replace")
            raise ValueError(
                f"regex {self.pattern!r} does not compile: {why} (patterns are RE2: linear time,"
                " so no backreferences or lookarounds)"
            ) from None
        object.__setattr__(self, "compiled", compiled)

    def holds(self, msg: JSON) -> bool:
        found = self.path.get(msg)
        return (
            isinstance(found, str)
            and len(found) <= MAX_REGEX_SUBJECT_CHARS
            and self.compiled.search(found) is not None
        )


@dataclass(frozen=True, slots=True)
class Exists:
    """The field is present (``present=True``) or absent; a JSON null counts as present."""

    path: JsonPath
    present: bool = True

    def holds(self, msg: JSON) -> bool:
        return (self.path.get(msg) is not MISSING) is self.present


Condition: TypeAlias = Equals | OneOf | Regex | Exists


def equals(path: str, value: JSON) -> Equals:
    return Equals(JsonPath.parse(path), value)


def one_of(path: str, values: Iterable[JSON]) -> OneOf:
    values = tuple(values)
    if not values:
        raise ValueError("one_of needs at least one value")
    return OneOf(JsonPath.parse(path), values)


def regex(path: str, pattern: str) -> Regex:
    return Regex(JsonPath.parse(path), pattern)


def exists(path: str, present: bool = True) -> Exists:
    return Exists(JsonPath.parse(path), present)


# -- the filter ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Matched:
    """A message the filter selects: its id (None without an id path) and its captures."""

    id: str | None
    captures: Mapping[str, str]
    message: JSON


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: IgnoreReason


Verdict: TypeAlias = Matched | Ignored

_NO_CAPTURES: Final[Mapping[str, str]] = {}
_FILTERED: Final = Ignored("filtered")
_MISSING_FIELD: Final = Ignored("missing_field")
_BAD_ID: Final = Ignored("bad_id")


class Filter:
    """Selects replies among inbound messages.

    A message matches when every condition holds and, if an id path is set, the id is present
    and a string or a number (anything else is ``bad_id``: an object or null cannot name a
    message). Capture paths are required too: a message without one of them is
    ``missing_field`` (a setup step keeps waiting rather than continue without the value).
    Ignored reasons are checked in a fixed order: decoding, conditions (``filtered``), the id,
    then captures.
    """

    __slots__ = ("_captures", "_conditions", "_id_path", "_max_bytes", "_max_depth")

    def __init__(
        self,
        id_path: str | JsonPath | None = None,
        conditions: Sequence[Condition] = (),
        captures: Mapping[str, str | JsonPath] | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self._id_path = None if id_path is None else as_path(id_path)
        self._conditions = tuple(conditions)
        self._captures = tuple((name, as_path(p)) for name, p in (captures or {}).items())
        self._max_bytes = max_bytes
        self._max_depth = max_depth

    @property
    def capture_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._captures)

    def classify(self, data: str | bytes) -> Verdict:
        """Decode a raw frame and classify it."""
        try:
            msg = decode_json(data, max_bytes=self._max_bytes, max_depth=self._max_depth)
        except DecodeError as exc:
            return Ignored(exc.reason)
        return self.classify_value(msg)

    def classify_value(self, msg: JSON) -> Verdict:
        """Classify an already decoded message (e.g. a payload a framing unwrapped)."""
        for condition in self._conditions:
            if not condition.holds(msg):
                return _FILTERED
        ident: str | None = None
        if self._id_path is not None:
            value = self._id_path.get(msg)
            if value is MISSING:
                return _MISSING_FIELD
            if isinstance(value, str):
                ident = value
            elif isinstance(value, int | float) and not isinstance(value, bool):
                ident = text_of(value)
            else:
                return _BAD_ID
        if not self._captures:
            return Matched(ident, _NO_CAPTURES, msg)
        captured: dict[str, str] = {}
        for name, path in self._captures:
            value = path.get(msg)
            if value is MISSING:
                return _MISSING_FIELD
            captured[name] = text_of(value)
        return Matched(ident, captured, msg)
