"""Message templates: ``{name}`` placeholders in JSON (or plain text) messages.

``{id}``, ``{seq}``, ``{send_time}`` and ``{probe}`` are filled by the probe for every message;
setup steps add the values they capture (``{session}``, ``{room}``...). A placeholder is an
identifier in braces, so JSON braces (``{"a": 1}``, ``{}``) pass through untouched.

When the template is JSON, a placeholder inside a JSON string has its value escaped as JSON
string content (a quote or a newline in a probe name or a captured token cannot break the
message); a placeholder outside a string is inserted as is, which is how numbers go in
(``{"seq": {seq}}``). Plain-text templates insert every value as is.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Final

BUILTIN_NAMES: Final = frozenset({"id", "seq", "send_time", "probe"})

_PLACEHOLDER: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class TemplateError(ValueError):
    pass


def _escape(value: str) -> str:
    # Ids, sequence numbers and probe names need no escaping: skipping json.dumps for them was
    # 4% of a 10,000-session echo fleet's CPU (issue 10). JSON escapes only '"', '\\' and
    # control characters, none of which a printable ASCII string without those two holds.
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)[1:-1]


def _string_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every double-quoted string, for text that may be JSON."""
    spans: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] == '"':
            start = i
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            spans.append((start, i))
        i += 1
    return spans


def _inside(spans: list[tuple[int, int]], pos: int) -> bool:
    return any(start < pos < end for start, end in spans)


class Template:
    """A compiled template. ``render`` needs a value for every name in ``names``."""

    __slots__ = ("_escaped", "_literals", "_names", "is_json", "names", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        matches = list(_PLACEHOLDER.finditer(text))
        spans = _string_spans(text)
        in_string = [_inside(spans, m.start()) for m in matches]
        self.is_json = _is_json(text, matches, in_string)
        self._literals: list[str] = []
        self._names: list[str] = []
        self._escaped: list[bool] = []
        last = 0
        for m, quoted in zip(matches, in_string, strict=True):
            self._literals.append(text[last : m.start()])
            self._names.append(m.group(1))
            self._escaped.append(self.is_json and quoted)
            last = m.end()
        self._literals.append(text[last:])
        self.names: frozenset[str] = frozenset(self._names)

    def render(self, values: Mapping[str, str]) -> str:
        out = [self._literals[0]]
        try:
            for name, escaped, literal in zip(
                self._names, self._escaped, self._literals[1:], strict=True
            ):
                value = values[name]
                out.append(_escape(value) if escaped else value)
                out.append(literal)
        except KeyError as exc:
            raise TemplateError(f"no value for placeholder {{{exc.args[0]}}}") from None
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.text!r})"


def _is_json(text: str, matches: list[re.Match[str]], in_string: list[bool]) -> bool:
    """Whether the template is JSON once its placeholders are filled with neutral values."""
    if not matches:
        probe_text = text
    else:
        parts: list[str] = []
        last = 0
        for m, quoted in zip(matches, in_string, strict=True):
            parts.append(text[last : m.start()])
            parts.append("x" if quoted else "0")
            last = m.end()
        parts.append(text[last:])
        probe_text = "".join(parts)
    try:
        json.loads(probe_text)
    except (ValueError, RecursionError):
        return False
    return True


# Every probe of a large config checks the same few templates.
@functools.lru_cache(maxsize=1024)
def placeholder_names(text: str) -> frozenset[str]:
    return frozenset(m.group(1) for m in _PLACEHOLDER.finditer(text))


def check_template(text: str, known_names: Iterable[str]) -> list[str]:
    """Problems with a template for the config layer: one message per unknown placeholder.

    ``known_names`` is what will be defined when the template is rendered: the built-ins plus
    the captures of the setup steps before it.
    """
    known: Collection[str] = frozenset(known_names)
    problems = []
    for name in sorted(placeholder_names(text) - set(known)):
        choices = ", ".join(f"{{{k}}}" for k in sorted(known))
        problems.append(f"unknown placeholder {{{name}}}; defined here: {choices or 'none'}")
    return problems
