"""Filters on inbound JSON messages and scripted session setup steps, as written in a config.

A filter (`where:` conditions, `capture:` values) turns into a probed.matching.Filter; a setup
step sends a templated message and waits for one that matches, capturing values for later
templates (a session id, a room id). Paths use the dotted syntax of probed/matching.py.
"""

import re
from typing import Any, Final

from pydantic import Field, field_validator

from probed.config.durations import Seconds
from probed.config.schema.strict import StrictModel
from probed.config.validation import Problem, _fail
from probed.matching import Condition, Filter, JsonPath, equals, exists, one_of, regex
from probed.template import check_template

_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,40}")


def _check_path(value: str) -> str:
    try:
        JsonPath.parse(value)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    return value


def _conditions_shorthand(value: object) -> object:
    # `where: {type: ack}` reads better than a list of one equals condition.
    if isinstance(value, dict):
        return [{"path": path, "equals": expected} for path, expected in value.items()]
    return value


class ConditionConfig(StrictModel):
    """One condition on a field: exactly one of equals, one_of, regex or exists."""

    path: str = Field(description="dotted path into the message's JSON, e.g. data.type")
    equals: Any = Field(default=None, description="the value there must equal this")
    one_of: list[Any] | None = Field(default=None, description="the value must be one of these")
    regex: str | None = Field(
        default=None,
        description="the value (as text) must match this; RE2 syntax (linear time: no"
        " backreferences or lookarounds)",
    )
    exists: bool | None = Field(
        default=None, description="true: the path must be there; false: it must not"
    )

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        return _check_path(value)

    def _semantic_problems(self) -> list[Problem]:
        given = [k for k in ("equals", "one_of", "regex", "exists") if k in self.model_fields_set]
        if len(given) != 1:
            return [((), "give exactly one of equals, one_of, regex or exists")]
        if self.regex is not None:
            try:
                regex(self.path, self.regex)
            except (ValueError, re.error) as exc:
                return [(("regex",), f"invalid pattern: {exc}")]
        return []

    def build(self) -> Condition:
        if "equals" in self.model_fields_set:
            return equals(self.path, self.equals)
        if self.one_of is not None:
            return one_of(self.path, self.one_of)
        if self.regex is not None:
            return regex(self.path, self.regex)
        return exists(self.path, bool(self.exists))


class FilterConfig(StrictModel):
    """Which inbound messages count: every `where` condition holds; `capture` names values."""

    where: list[ConditionConfig] = Field(
        default_factory=list,
        description="conditions; a mapping {path: value} is short for equals conditions",
    )
    capture: dict[str, str] = Field(
        default_factory=dict, description="template variable name -> dotted path to copy"
    )

    @field_validator("where", mode="before")
    @classmethod
    def _where_shorthand(cls, value: object) -> object:
        return _conditions_shorthand(value)

    @field_validator("capture")
    @classmethod
    def _check_capture(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not _NAME_RE.fullmatch(name):
                raise _fail(f"capture name {name!r} must be a short identifier")
            _check_path(path)
        return value

    def build(self, id_path: str | None = None) -> Filter:
        return Filter(id_path, [c.build() for c in self.where], dict(self.capture))


class SetupStepConfig(StrictModel):
    """Send a message (optional), then wait for one matching `expect` (optional)."""

    name: str = Field(description="named in the log when the step fails")
    send: str | None = Field(default=None, description="message template ({probe}, captures)")
    expect: FilterConfig | None = Field(
        default=None, description="the reply that completes the step (unset: no reply awaited)"
    )
    error: FilterConfig | None = Field(
        default=None, description="a message matching this fails the step at once"
    )
    timeout: Seconds = Field(default=5.0, description="how long to wait for the expected reply")

    def _semantic_problems(self) -> list[Problem]:
        if self.send is None and self.expect is None:
            return [((), "a step sends a message, waits for one (expect), or both")]
        return []


def check_steps(steps: list[SetupStepConfig], known: set[str]) -> tuple[list[Problem], set[str]]:
    """Unknown placeholders in the steps' messages; returns them and every name defined after."""
    problems: list[Problem] = []
    defined = set(known)
    for index, step in enumerate(steps):
        if step.send is not None:
            problems.extend(((index, "send"), m) for m in check_template(step.send, defined))
        if step.expect is not None:
            defined |= set(step.expect.capture)
    return problems, defined


class MatchConfig(StrictModel):
    """Which inbound messages are replies, and how a reply names its message."""

    # `json` would shadow BaseModel.json(), so the attribute is json_ and the key is "json".
    json_: str | None = Field(
        default=None,
        alias="json",
        description="the reply field (dotted path, e.g. data.id) holding the message's {id}",
    )
    raw: bool = Field(default=False, description="the reply is the message echoed verbatim")
    where: list[ConditionConfig] = Field(
        default_factory=list,
        description="only messages meeting these conditions are replies; others are ignored",
    )

    @field_validator("where", mode="before")
    @classmethod
    def _where_shorthand(cls, value: object) -> object:
        return _conditions_shorthand(value)

    @field_validator("json_")
    @classmethod
    def _check_json_path(cls, value: str | None) -> str | None:
        if value is not None and not all(part.strip() for part in value.split(".")):
            raise _fail("must be a field name or a dotted path such as data.id")
        return value

    def _semantic_problems(self) -> list[Problem]:
        if self.raw and self.where:
            return [(("where",), "conditions need JSON replies; not with raw")]
        if self.json_ is not None and self.raw:
            return [((), "set either json or raw, not both")]
        if self.json_ is None and not self.raw:
            return [((), "set json (the reply field holding the id) or raw: true")]
        return []


class MessageConfig(StrictModel):
    template: str = Field(
        default='{"type":"ping","id":"{id}","seq":{seq},"sent_at":{send_time}}',
        description="text of each message; {id}, {seq}, {send_time} and {probe} are filled in",
    )
    match: MatchConfig = Field(
        default=MatchConfig(json="id"),
        description="how a reply is matched to its message: json or raw, and optional filters",
    )

    def _semantic_problems(self) -> list[Problem]:
        if self.match.json_ is not None and "{id}" not in self.template:
            return [(("template",), "must contain {id} when replies are matched by a JSON field")]
        if self.match.raw and "{id}" not in self.template and "{seq}" not in self.template:
            return [
                (
                    ("template",),
                    "must contain {id} or {seq} when replies are matched as raw text, "
                    "or every message would look the same",
                )
            ]
        return []
