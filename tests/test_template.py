"""Message templates: placeholders, JSON escaping, config-time checks."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probed.template import BUILTIN_NAMES, Template, TemplateError, check_template

VALUES = {"id": "r-1-0", "seq": "0", "send_time": "1700000000.000001", "probe": "chat"}


def test_builtins_and_json_braces_pass_through() -> None:
    t = Template('{"type":"ping","id":"{id}","seq":{seq},"t":{send_time},"p":"{probe}","o":{}}')
    assert t.is_json
    assert t.names == BUILTIN_NAMES
    assert json.loads(t.render(VALUES)) == {
        "type": "ping",
        "id": "r-1-0",
        "seq": 0,
        "t": 1700000000.000001,
        "p": "chat",
        "o": {},
    }


def test_values_inside_json_strings_are_escaped() -> None:
    t = Template('{"from":"{probe}","token":"Bearer {token}"}')
    hostile = {"probe": 'a"b\\c\nd', "token": '"},"admin":true,"x":"\u2028'}
    assert json.loads(t.render(hostile)) == {
        "from": hostile["probe"],
        "token": "Bearer " + hostile["token"],
    }


def test_values_outside_strings_and_in_plain_text_go_in_as_they_are() -> None:
    assert Template('{"room": {room}}').render({"room": '{"id":7}'}) == '{"room": {"id":7}}'
    plain = Template('ping "{id}" from {probe}')
    assert not plain.is_json
    assert plain.render({"id": 'a"b', "probe": "p"}) == 'ping "a"b" from p'
    assert Template("{id}").render({"id": "x"}) == "x"


def test_a_missing_value_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match=r"\{room\}"):
        Template('{"room":"{room}"}').render(VALUES)


def test_check_template_names_unknown_placeholders() -> None:
    assert check_template('{"id":"{id}","s":"{session}"}', BUILTIN_NAMES | {"session"}) == []
    problems = check_template('{"id":"{id}","s":"{sesion}","r":{room}}', BUILTIN_NAMES)
    assert len(problems) == 2
    assert problems[0].startswith("unknown placeholder {room}")
    assert "{id}" in problems[0]
    assert check_template("{x}", []) == ["unknown placeholder {x}; defined here: none"]


def test_the_old_echo_template_behaviour_is_kept() -> None:
    # What probed.probes.echo.Template rendered stays byte for byte the same for its inputs.
    text = '{"type":"ping","id":"{id}","seq":{seq},"sent":"{send_time}"}'
    assert Template(text).render(VALUES) == (
        '{"type":"ping","id":"r-1-0","seq":0,"sent":"1700000000.000001"}'
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40), st.text(max_size=40))
def test_fuzz_any_string_value_keeps_json_valid(a: str, b: str) -> None:
    t = Template('{"a":"{a}","b":["x{b}y"]}')
    assert json.loads(t.render({"a": a, "b": b})) == {"a": a, "b": [f"x{b}y"]}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=60))
def test_fuzz_compiling_any_text_is_safe(text: str) -> None:
    t = Template(text)
    assert t.render(dict.fromkeys(t.names, "v")) is not None
