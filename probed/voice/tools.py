"""Whether the agent called the tool the fixture asked for, with the arguments it implied."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from probed.adapters.events import ToolCall
from probed.adapters.voice import parse_arguments

# Bounded: the `result` label of probe_voice_tool_calls_total.
ToolResult = Literal["ok", "wrong", "missing"]
TOOL_RESULTS: tuple[ToolResult, ...] = ("ok", "wrong", "missing")


@dataclass(frozen=True)
class ToolExpectation:
    """The call a fixture should cause. Each expected argument must be present and equal
    (strings compared case-insensitively, numbers by value); other arguments are allowed."""

    name: str
    arguments: Mapping[str, object] = field(default_factory=dict)


def _same(expected: object, actual: object) -> bool:
    if isinstance(expected, str) and isinstance(actual, str):
        return expected.strip().lower() == actual.strip().lower()
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected == actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return float(expected) == float(actual)
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(
            _same(e, a) for e, a in zip(expected, actual, strict=True)
        )
    return expected == actual


def call_matches(expect: ToolExpectation, call: ToolCall) -> bool:
    if call.name != expect.name:
        return False
    arguments = parse_arguments(call.arguments)
    if arguments is None:
        return False
    return all(k in arguments and _same(v, arguments[k]) for k, v in expect.arguments.items())


def judge(expect: ToolExpectation | None, calls: Sequence[ToolCall]) -> ToolResult | None:
    """ok: the first call is the expected one; wrong: a call came but not that one (or one
    came unasked); missing: none came; None: none was expected and none came."""
    if expect is None:
        return "wrong" if calls else None
    if not calls:
        return "missing"
    return "ok" if call_matches(expect, calls[0]) else "wrong"
