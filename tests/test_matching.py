"""Reply filters and bounded JSON decoding, with hostile input fuzzed by hypothesis."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probed.matching import (
    IGNORE_REASONS,
    MAX_PATTERN_CHARS,
    MAX_REGEX_SUBJECT_CHARS,
    MISSING,
    DecodeError,
    Filter,
    Ignored,
    JsonPath,
    Matched,
    decode_json,
    equals,
    exists,
    json_equal,
    one_of,
    regex,
    text_of,
)
from tests.conftest import bound

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


# -- decoding -----------------------------------------------------------------------------------


def test_decodes_text_and_bytes() -> None:
    assert decode_json('{"a":[1,2]}') == {"a": [1, 2]}
    assert decode_json(b'{"a":"\xc3\xa9"}') == {"a": "é"}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("", "not_json"),
        ("{", "not_json"),
        (b"\xff\xfe\xfa", "not_json"),
        ("NaN", "not_json"),
        ('{"a": Infinity}', "not_json"),
        ("1" * 5000, "not_json"),  # past Python's int-digits limit
        ("[" * 100_000 + "]" * 100_000, "too_deep"),  # would be a RecursionError in json.loads
        ("[" * 65 + "]" * 65, "too_deep"),
    ],
)
def test_bad_input_is_a_typed_error(data: str | bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_json(data)
    assert caught.value.reason == reason


def test_limits_are_inclusive_and_configurable() -> None:
    assert decode_json("[" * 64 + "]" * 64) is not None
    assert decode_json('"' + "x" * 8 + '"', max_bytes=10) == "x" * 8
    with pytest.raises(DecodeError, match="too_large"):
        decode_json('"' + "x" * 9 + '"', max_bytes=10)
    with pytest.raises(DecodeError, match="too_deep"):
        decode_json('{"a":{"b":[1]}}', max_depth=2)
    # Brackets inside strings do not count towards the depth.
    assert decode_json('["' + "[" * 100 + '"]', max_depth=1) == ["[" * 100]


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_fuzz_decode_raises_only_decode_error(data: str | bytes) -> None:
    try:
        decode_json(data, max_depth=8, max_bytes=200)
    except DecodeError as exc:
        assert exc.reason in ("not_json", "too_large", "too_deep")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_fuzz_decode_roundtrips_json(value: Any) -> None:
    assert json_equal(decode_json(json.dumps(value)), value)


# -- paths --------------------------------------------------------------------------------------


def test_path_syntax() -> None:
    msg = {"a": {"b": [{"c": 1}, {"c": 2}]}, "x.y": {"z": 3}, "0": "zero", "q\\": 4}
    assert JsonPath.parse("a.b.1.c").get(msg) == 2
    assert JsonPath.parse("a.b.0").get(msg) == {"c": 1}
    assert JsonPath.parse(r"x\.y.z").get(msg) == 3
    assert JsonPath.parse("0").get(msg) == "zero"  # digits are keys on objects
    assert JsonPath.parse("q\\\\").get(msg) == 4
    assert JsonPath.parse(r"x\.y.z").segments == ("x.y", "z")
    for missing in ("a.b.2.c", "a.nope", "a.b.c", "a.b.0.c.d", "x.y.z", "a.b.-1"):
        assert JsonPath.parse(missing).get(msg) is MISSING
    assert JsonPath.parse("n").get({"n": None}) is None  # null is present


@pytest.mark.parametrize("bad", ["", "a..b", ".a", "a.", "a\\", "a\\b", "x" * 600])
def test_bad_paths_are_config_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="path"):
        JsonPath.parse(bad)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=5), json_values)
def test_fuzz_escaped_paths_address_their_keys(keys: list[str], leaf: Any) -> None:
    msg: Any = leaf
    for key in reversed(keys):
        msg = {key: msg}
    text = ".".join(k.replace("\\", "\\\\").replace(".", "\\.") for k in keys)
    assert json_equal(JsonPath.parse(text).get(msg), leaf)


def test_json_equality_keeps_bools_and_numbers_apart() -> None:
    assert json_equal(1, 1.0)
    assert not json_equal(True, 1)
    assert not json_equal(0, False)
    assert not json_equal(None, False)
    assert not json_equal("1", 1)
    assert json_equal({"a": [1, True]}, {"a": [1.0, True]})
    assert not json_equal({"a": [1, True]}, {"a": [1, 1]})


# -- conditions and the filter ------------------------------------------------------------------


def test_ack_plus_broadcast_only_acks_are_replies() -> None:
    f = Filter("id", [equals("type", "ack")])
    assert f.classify('{"type":"ack","id":"r-1-7"}') == Matched(
        "r-1-7", {}, {"type": "ack", "id": "r-1-7"}
    )
    assert f.classify('{"type":"message","id":"r-1-7"}') == Ignored("filtered")
    assert f.classify('{"type":"message","from":"bob"}') == Ignored("filtered")
    assert f.classify('{"type":"ack"}') == Ignored("missing_field")
    assert f.classify('{"type":"ack","id":null}') == Ignored("bad_id")
    assert f.classify('{"type":"ack","id":{"x":1}}') == Ignored("bad_id")
    assert f.classify('{"type":"ack","id":42}') == Matched("42", {}, {"type": "ack", "id": 42})
    assert f.classify("nope") == Ignored("not_json")
    assert f.classify("[" * 1000 + "]" * 1000) == Ignored("too_deep")


def test_conditions() -> None:
    msg = {"type": "next", "n": 2, "flag": True, "name": "room-17", "nil": None}
    assert one_of("type", ["next", "data"]).holds(msg)
    assert not one_of("type", ["error"]).holds(msg)
    assert not one_of("flag", [1]).holds(msg)
    assert equals("n", 2.0).holds(msg)
    assert not equals("missing", None).holds(msg)
    assert equals("nil", None).holds(msg)
    assert regex("name", r"^room-\d+$").holds(msg)
    assert not regex("n", r"2").holds(msg)  # only strings
    assert exists("nil").holds(msg)
    assert exists("missing", present=False).holds(msg)
    assert not exists("type", present=False).holds(msg)
    long_subject = {"s": "a" * (MAX_REGEX_SUBJECT_CHARS + 1)}
    assert not regex("s", "a").holds(long_subject)
    with pytest.raises(ValueError, match="one_of"):
        one_of("type", [])


def test_regex_is_bounded_and_checked_at_config_time() -> None:
    with pytest.raises(ValueError, match="longer"):
        regex("a", "x" * (MAX_PATTERN_CHARS + 1))
    with pytest.raises(ValueError, match="compile"):
        regex("a", "(unclosed")
    with pytest.raises(ValueError, match="no backreferences"):
        regex("a", r"(a)\1")


def test_a_regex_cannot_be_made_to_backtrack_by_the_subject() -> None:
    """Nested quantifiers over a subject the server picks: exponential in a backtracking engine
    (about 1.4 s for 24 characters here with Python's re; each one more doubles it)."""
    evil = regex("s", r"^(\w+\s?)+$")
    subject = {"s": "a" * 40 + "!"}
    started = time.perf_counter()
    assert not evil.holds(subject)
    assert time.perf_counter() - started < bound(2.0)


def test_captures_and_filters_without_an_id() -> None:
    f = Filter(None, [equals("type", "welcome")], {"session": "sid", "room": "room.id", "n": "n"})
    verdict = f.classify('{"type":"welcome","sid":"abc","room":{"id":7},"n":[1,"x"]}')
    assert isinstance(verdict, Matched)
    assert verdict.id is None
    assert verdict.captures == {"session": "abc", "room": "7", "n": '[1,"x"]'}
    assert f.capture_names == ("session", "room", "n")
    assert f.classify('{"type":"welcome","room":{"id":7},"n":1}') == Ignored("missing_field")
    assert text_of(True) == "true"
    assert text_of(None) == "null"


def test_classify_value_takes_a_decoded_payload() -> None:
    f = Filter("data.onMessage.id")
    verdict = f.classify_value({"data": {"onMessage": {"id": "m1"}}})
    assert isinstance(verdict, Matched)
    assert verdict.id == "m1"


_FUZZ_FILTER = Filter(
    "a.0.id",
    [one_of("type", ["ack", 1, None]), regex("s", r"^(a|b)+$"), exists("z", present=False)],
    {"cap": "a.0"},
    max_bytes=400,
    max_depth=6,
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400) | st.text(max_size=400))
def test_fuzz_filter_on_raw_frames(data: str | bytes) -> None:
    verdict = _FUZZ_FILTER.classify(data)
    assert isinstance(verdict, Matched) or verdict.reason in IGNORE_REASONS


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["ack", 1, None, True, "x"]) | json_values,
            "s": st.text(alphabet="ab!", max_size=30) | json_values,
            "a": st.lists(st.fixed_dictionaries({}, optional={"id": json_values})) | json_values,
            "z": json_values,
        },
    )
)
def test_fuzz_filter_on_json_shaped_messages(msg: dict[str, Any]) -> None:
    verdict = _FUZZ_FILTER.classify(json.dumps(msg))
    if isinstance(verdict, Matched):
        assert msg["type"] in ("ack", 1, None) and not isinstance(msg["type"], bool)
        assert "z" not in msg
        assert verdict.id == text_of(msg["a"][0]["id"])
    else:
        assert verdict.reason in IGNORE_REASONS
