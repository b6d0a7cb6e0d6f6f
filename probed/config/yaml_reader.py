"""YAML node tree to plain data, keeping every value's line.

Composing (rather than loading) the YAML lets the reader record the line of every key and list
item, catch duplicate keys, expand ${VAR} per string scalar and cap alias expansion, before any
of it reaches pydantic.
"""

import re
from collections.abc import Mapping
from typing import Any, Final

import yaml

from probed.config.validation import Loc

_MAP_TAG: Final = "tag:yaml.org,2002:map"
_SEQ_TAG: Final = "tag:yaml.org,2002:seq"
_STR_TAG: Final = "tag:yaml.org,2002:str"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
# Aliases can expand a small file exponentially ("billion laughs"); no real config comes close,
# neither in values nor in bytes (aliases of one long string multiply bytes, not nodes).
_MAX_NODES: Final = 200_000
MAX_EXPANDED_BYTES: Final = 16 * 1024 * 1024
# The composer recurses once per level; a real config nests fewer than ten deep.
MAX_DEPTH: Final = 64
_TIMESTAMP_TAG: Final = "tag:yaml.org,2002:timestamp"
_INT_TAG: Final = "tag:yaml.org,2002:int"
_FLOAT_TAG: Final = "tag:yaml.org,2002:float"
_ENV_REF_RE: Final = re.compile(r"\$(?:(\$)|\{([^}]*)(\})?)")
_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _TooLarge(Exception):
    pass


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses to nest deeper than MAX_DEPTH or to build more than _MAX_NODES
    nodes, with the line where it happens.

    PyYAML composes nested collections recursively: a few thousand `[` would otherwise end in
    RecursionError, a traceback rather than an error that names a line.
    """

    _depth = 0
    _nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH or self._nodes > _MAX_NODES:
                event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
                mark: Any = event.start_mark
                problem = (
                    f"values nest deeper than {MAX_DEPTH} levels"
                    if self._depth > MAX_DEPTH
                    else f"more than {_MAX_NODES} values in the file"
                )
                raise yaml.composer.ComposerError(None, None, problem, mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# PyYAML's scanner slows down with every open flow collection ([ or {) on a line: deep flow
# nesting repeated over a file takes it minutes. Real configs nest flow collections a few deep.
MAX_FLOW_DEPTH: Final = 16
_BRACKET_RE: Final = re.compile(r"[\[\]{}]")


def flow_nesting_problem(text: str) -> tuple[int, str] | None:
    """(line, message) if brackets are too many or nest too deep to be worth scanning.

    Counted on the raw text, strings included: a JSON template nests a few levels at most.
    """
    opening = text.count("[") + text.count("{")
    if opening > _MAX_NODES:
        return 1, f"more than {_MAX_NODES} [ or {{ in the file"
    if opening <= MAX_FLOW_DEPTH:
        return None
    depth = 0
    for match in _BRACKET_RE.finditer(text):
        if match.group() in "[{":
            depth += 1
            if depth > MAX_FLOW_DEPTH:
                line = text.count("\n", 0, match.start()) + 1
                return line, f"[ and {{ nest deeper than {MAX_FLOW_DEPTH} levels"
        else:
            depth = max(0, depth - 1)
    return None


def _unreadable(tag: str) -> str:
    # The value itself is never quoted: it may be a secret with a typo in it.
    if tag == _TIMESTAMP_TAG:
        return "looks like a date but is not a valid one; quote it if it is text"
    if tag in (_INT_TAG, _FLOAT_TAG):
        return "is not a usable number (too many digits?); quote it if it is text"
    return "cannot be read; quote it if it is text"


class _DocumentReader:
    """Turns a composed YAML node tree into plain data, remembering the line of every key and
    list item, expanding ${VAR} in string values and collecting problems as it goes."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.lines: dict[Loc, int] = {}
        self.issues: list[tuple[Loc, int | None, str]] = []
        # Values that could not be read; validation errors at or under them are just echoes.
        self.failed: list[Loc] = []
        # Values that came (partly) from the environment: errors must not echo them.
        self.from_env: list[Loc] = []
        self._constructor = yaml.constructor.SafeConstructor()
        self._active: set[int] = set()
        self._budget = _MAX_NODES
        self._bytes = MAX_EXPANDED_BYTES
        self._expanded: dict[int, tuple[str, list[str], bool]] = {}

    def read(self, root: yaml.Node) -> Any:
        self.lines[()] = root.start_mark.line + 1
        try:
            return self._value(root, (), self.lines)
        except _TooLarge:
            self.issues.append(
                (
                    (),
                    None,
                    f"the document is too large once aliases are expanded (more than "
                    f"{_MAX_NODES} values or {MAX_EXPANDED_BYTES // 2**20} MiB; check for runaway "
                    "aliases)",
                )
            )
            return None

    def _spend(self, size: int) -> None:
        self._bytes -= size
        if self._bytes < 0:
            raise _TooLarge

    def _problem(self, loc: Loc, node: yaml.Node, message: str) -> None:
        self.issues.append((loc, node.start_mark.line + 1, message))
        self.failed.append(loc)

    def _value(self, node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> Any:
        self._budget -= 1
        if self._budget < 0:
            raise _TooLarge
        if id(node) in self._active:
            self._problem(loc, node, "an alias refers to a value that contains it")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG:
                return self._mapping(node, loc, lines)
            if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
                items = []
                for index, item in enumerate(node.value):
                    lines[(*loc, index)] = item.start_mark.line + 1
                    items.append(self._value(item, (*loc, index), lines))
                return items
            return self._scalar(node, loc)
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: yaml.Node, loc: Loc) -> Any:
        if isinstance(node, yaml.ScalarNode):
            self._spend(len(node.value))
        try:
            value = self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError:
            self._problem(loc, node, f"unsupported YAML tag {node.tag}")
            return None
        except Exception:
            # A resolver or an explicit tag chose a type the constructor could not build:
            # 2024-13-45, an integer past Python's digit limit, `!!timestamp x` (which PyYAML
            # answers with an AttributeError). Whatever it raises, it is this value's problem.
            self._problem(loc, node, _unreadable(node.tag))
            return None
        if isinstance(value, str) and node.tag == _STR_TAG:
            expanded = self._expand(value, loc, node)
            self._spend(len(expanded) - len(node.value))
            return expanded
        return value

    def _mapping(self, node: yaml.MappingNode, loc: Loc, lines: dict[Loc, int]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merge_sources: list[yaml.MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merge_sources.extend(self._merge_sources(value_node, loc))
                continue
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem(loc, key_node, "keys must be plain strings")
                continue
            # Keys as written: every key in the schema is a string, and YAML 1.1 would turn a
            # label called `no` or `on` into a boolean.
            key = str(key_node.value)
            self._spend(len(key))
            key_loc = (*loc, key)
            if key in first_line:
                self._problem(
                    key_loc, key_node, f"duplicate key (first set on line {first_line[key]})"
                )
            else:
                first_line[key] = key_line
            lines[key_loc] = key_line
            result[key] = self._value(value_node, key_loc, lines)
        # YAML merge keys (<<: *defaults): explicit keys win, then earlier sources win. Lines of
        # merged values point at where they are written, i.e. at the anchor.
        for source in merge_sources:
            source_lines: dict[Loc, int] = {}
            merged = self._value(source, loc, source_lines)
            if not isinstance(merged, dict):
                continue
            for key, value in merged.items():
                if key in result:
                    continue
                result[key] = value
                prefix = (*loc, key)
                for sub_loc, sub_line in source_lines.items():
                    if sub_loc[: len(prefix)] == prefix:
                        lines[sub_loc] = sub_line
        return result

    def _merge_sources(self, node: yaml.Node, loc: Loc) -> list[yaml.MappingNode]:
        if isinstance(node, yaml.MappingNode):
            return [node]
        if isinstance(node, yaml.SequenceNode) and all(
            isinstance(item, yaml.MappingNode) for item in node.value
        ):
            return list(node.value)
        self._problem(loc, node, "a merge key (<<) needs a mapping or a list of mappings")
        return []

    def _expand(self, text: str, loc: Loc, node: yaml.Node) -> str:
        if "$" not in text:
            return text
        # An aliased string is expanded once, however often it is used.
        cached = self._expanded.get(id(node))
        if cached is None:
            cached = self._expanded[id(node)] = self._substitute(text)
        expanded, problems, uses_env = cached
        for message in problems:
            self._problem(loc, node, message)
        if uses_env:
            self.from_env.append(loc)
        # On failure keep the text as written (no secret in it) so validation can still run.
        return text if problems else expanded

    def _substitute(self, text: str) -> tuple[str, list[str], bool]:
        problems: list[str] = []
        uses_env = False

        def substitute(match: re.Match[str]) -> str:
            nonlocal uses_env
            if match.group(1):
                return "$"
            uses_env = True
            name = match.group(2)
            if match.group(3) is None:
                problems.append("unterminated ${ (write $$ for a literal $)")
            elif not _ENV_NAME_RE.fullmatch(name):
                problems.append(f'"${{{name}}}" is not a valid environment variable reference')
            elif name not in self.env:
                problems.append(f"environment variable {name} is not set")
            else:
                return self.env[name]
            return match.group(0)

        return _ENV_REF_RE.sub(substitute, text), problems, uses_env
