"""Go-style durations ("500ms", "1h30m"): parsing, formatting and the Seconds field type."""

import functools
import math
import re
from datetime import timedelta
from fractions import Fraction
from typing import Annotated, Final

from pydantic import (
    AfterValidator,
    BeforeValidator,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
)

from probed.config.validation import _fail, _LoadContext, _quoted

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


class _DurationError(ValueError):
    """Why a text is not a duration, without the text: callers decide whether to echo it."""


# Ten thousand probes repeat a handful of durations ("1s", "5s"): parsed once each, exactly.
@functools.lru_cache(maxsize=4096)
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
