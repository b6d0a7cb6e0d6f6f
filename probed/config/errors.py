"""ConfigError and ConfigIssue, and how YAML and pydantic errors become issues.

Pydantic error locations are mapped back to YAML paths and lines; messages are built from the
error type and pydantic's ``msg`` only, never from the offending input, so a secret never leaks
into an error.
"""

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from difflib import get_close_matches
from types import UnionType
from typing import Annotated, Any, Final, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from probed.config.schema.probes import PROBE_KINDS, _kind_of
from probed.config.schema.root import config_model
from probed.config.validation import _PROBLEMS_ERROR, Loc, _quoted
from probed.config.yaml_reader import _DocumentReader


@dataclass(frozen=True)
class ConfigIssue:
    path: str  # "probes[0].connection.keepalive.interval", "global.listen"; "" for the file
    line: int | None  # 1-based line in the YAML file
    message: str


class ConfigError(Exception):
    """A config that must not be used, with every issue found in it."""

    def __init__(self, issues: Iterable[ConfigIssue], source: str = "<config>") -> None:
        self.issues = list(issues)
        self.source = source
        super().__init__(self.issues, source)

    def lines(self) -> list[str]:
        """One readable line per issue: "file:line: path: message", for people and logs."""
        lines = []
        for issue in self.issues:
            where = self.source if issue.line is None else f"{self.source}:{issue.line}"
            lines.append(
                f"{where}: {issue.path}: {issue.message}"
                if issue.path
                else f"{where}: {issue.message}"
            )
        return lines

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional; leave real unions (probe kinds) alone."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if get_origin(annotation) in (Union, UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _key_of(name: str, field: FieldInfo) -> str:
    """The key a field is written as in a config file."""
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    return field.alias or name


def _field_key(model: type[BaseModel], key: str | int) -> Any:
    for name, field in model.model_fields.items():
        if key == _key_of(name, field):
            return field.annotation
    return None


def _resolve(raw_loc: Loc) -> tuple[Loc, type[BaseModel] | None]:
    """Drop the union tags pydantic inserts into locations (('probes', 0, 'echo', ...))
    and find the model the location ends in, for "did you mean" hints."""
    loc: list[str | int] = []
    current: Any = config_model()
    for position, part in enumerate(raw_loc):
        current = _unwrap(current)
        if part == "[key]":
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            if _kind_of(current) == part and _field_key(current, part) is None:
                continue
            loc.append(part)
            current = _field_key(current, part)
        elif get_origin(current) in (Union, UnionType):
            members = [m for m in get_args(current) if isinstance(m, type) and _kind_of(m) == part]
            current = members[0] if members else None
            if current is None:
                loc.append(part)
        elif get_origin(current) is list and isinstance(part, int):
            loc.append(part)
            current = get_args(current)[0]
        elif get_origin(current) is dict:
            loc.append(part)
            current = get_args(current)[1]
        else:
            loc.extend(p for p in raw_loc[position:] if p != "[key]")
            return tuple(loc), None
    current = _unwrap(current)
    model = current if isinstance(current, type) and issubclass(current, BaseModel) else None
    return tuple(loc), model


def _known_keys(model: type[BaseModel]) -> list[str]:
    return [_key_of(name, field) for name, field in model.model_fields.items()]


_TYPE_NAMES: Final = {
    bool: "a boolean",
    int: "a number",
    float: "a number",
    date: "a date",
    datetime: "a date",
}
_FIXED_MESSAGES: Final = {
    "missing": "required key is missing",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "list_type": "expected a list",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
}


def _message_for(error: Mapping[str, Any], parent: type[BaseModel] | None) -> str:
    """An SRE-facing message built from the error's type and pydantic's text, never its input."""
    kind = error["type"]
    message = _FIXED_MESSAGES.get(kind)
    if kind == "extra_forbidden":
        message = "unknown key"
        key = error["loc"][-1]
        if parent is not None and isinstance(key, str):
            close = get_close_matches(key, _known_keys(parent), n=1, cutoff=0.6)
            if close:
                message += f' (did you mean "{close[0]}"?)'
    elif kind == "string_type":
        # The input's type is named (it explains the error), its value never is.
        message = "expected a string"
        read_as = _TYPE_NAMES.get(type(error.get("input")))
        if read_as:
            message += f"; YAML read this as {read_as}, so quote it"
    elif kind == "literal_error":
        message = f"must be one of {(error.get('ctx') or {}).get('expected', '')}"
    if message is None:
        message = str(error["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            message = message.removeprefix(prefix)
        if message.startswith("Input should be"):
            message = "should be" + message.removeprefix("Input should be")
    return message


def _line_of(lines: Mapping[Loc, int], loc: Loc) -> int | None:
    while True:
        if loc in lines:
            return lines[loc]
        if not loc:
            return None
        loc = loc[:-1]


def _validation_issues(
    exc: ValidationError, reader: _DocumentReader
) -> Iterator[tuple[Loc, int | None, str]]:
    lines = reader.lines
    known_kinds = ", ".join(PROBE_KINDS)
    for error in exc.errors(include_url=False):
        loc, _ = _resolve(tuple(error["loc"]))
        kind = error["type"]
        # Input is echoed only where it helps and only if written in the file itself.
        may_echo = not _is_under(loc, reader.from_env)
        if kind == _PROBLEMS_ERROR:
            echo = error["ctx"].get("echo")
            for sub_loc, message in error["ctx"]["problems"]:
                full = (*loc, *sub_loc)
                shown = f"{message} (got {echo})" if echo is not None and may_echo else message
                yield full, _line_of(lines, full), shown
        elif kind == "union_tag_invalid":
            full = (*loc, "kind")
            from_env = _is_under(full, reader.from_env)
            tag = "value" if from_env else _quoted(str(error["ctx"].get("tag", "")))
            yield (
                full,
                _line_of(lines, full),
                f"unknown probe kind {tag}; known kinds: {known_kinds}",
            )
        elif kind == "union_tag_not_found":
            yield (
                (*loc, "kind"),
                _line_of(lines, loc),
                f"required key is missing; known kinds: {known_kinds}",
            )
        elif kind == "missing":
            # The key is not in the file, so point at the mapping that should hold it.
            yield loc, _line_of(lines, loc[:-1]), _message_for(error, None)
        else:
            parent = _resolve(tuple(error["loc"])[:-1])[1] if kind == "extra_forbidden" else None
            yield loc, _line_of(lines, loc), _message_for(error, parent)


# PyYAML's wording for the usual hand-editing slips, and what to do about each.
_YAML_HINTS: Final = (
    (
        "expected <block end>",
        "check the indentation of this line: keys of one mapping start in the same column, "
        "and the keys of a list item line up with the first key after its '- '",
    ),
    (
        "mapping values are not allowed here",
        "this key is indented deeper than the key above it, or a value holding ': ' needs quotes",
    ),
    ("found character '\\t'", "YAML indents with spaces only; replace the tabs"),
    (
        "could not find expected ':'",
        "a key is missing its ':' or a quoted value is not closed",
    ),
)


def _yaml_hint(problem: str) -> str:
    return next((hint for text, hint in _YAML_HINTS if text in problem), "")


def _yaml_issue(exc: yaml.YAMLError, text: str) -> ConfigIssue:
    if isinstance(exc, yaml.MarkedYAMLError):
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        message = f"invalid YAML: {exc.problem or exc.context or 'syntax error'}"
        if exc.problem and exc.context:
            context_line = exc.context_mark.line + 1 if exc.context_mark is not None else None
            where = f" started on line {context_line}" if context_line not in (None, line) else ""
            message += f" ({exc.context}{where})"
        hint = _yaml_hint(exc.problem or "")
        if hint:
            message += f"; hint: {hint}"
        return ConfigIssue("", line, message)
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, int(exc.position)) + 1
        return ConfigIssue("", line, f"invalid YAML: {exc.reason}: character #x{exc.character:04x}")
    return ConfigIssue("", None, f"invalid YAML: {exc}")


def _is_under(loc: Loc, roots: Sequence[Loc]) -> bool:
    return any(loc[: len(root)] == root for root in roots)
