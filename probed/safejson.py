"""Decoding JSON from the far end within bounds: size, nesting depth, and no exception but one.

`json.loads` recurses once per nesting level, so a reply of a few thousand `[` raises
RecursionError (not ValueError) out of the parser, and a decoded deep value breaks `str()` and
`repr()` later. Here the size is bounded before decoding, the depth after it without recursion,
and every way decoding can fail becomes `JsonRefused` with a bounded reason for the unmatched
counter.
"""

from __future__ import annotations

import json
from typing import Any, Final

MAX_DEPTH: Final = 64
MAX_BYTES: Final = 1 << 20


class JsonRefused(ValueError):
    """The text was not decoded; `reason` is a bounded label value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def deeper_than(value: Any, limit: int) -> bool:
    """Whether decoded JSON nests containers more than `limit` deep (iterative, stops early)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def loads(data: str | bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Decode JSON, or raise JsonRefused("too_large" | "too_deep" | "not_json")."""
    if len(data) > max_bytes:
        raise JsonRefused("too_large")
    try:
        # The C decoder guards its own recursion and raises RecursionError past the
        # interpreter's limit; shallower values are measured after decoding.
        value = json.loads(data)
    except RecursionError:
        raise JsonRefused("too_deep") from None
    except ValueError:
        raise JsonRefused("not_json") from None
    if deeper_than(value, max_depth):
        raise JsonRefused("too_deep")
    return value
