"""Fuzzing what parses server frames: the bounded JSON decoder, reply filters and redaction."""

from __future__ import annotations

import json
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from probed.matching import DecodeError, Filter, decode_json
from probed.redact import MAX_TEXT, REDACTED, Redactor

EXAMPLES = int(os.environ.get("PROBED_FUZZ_EXAMPLES", "300"))
_json_bits = st.sampled_from(
    ['{"id":', "[", "]", "{", "}", '"', "\\", "1e999", "-", ",", ":", "nul"]
)
_json_like = st.lists(st.one_of(_json_bits, st.text(max_size=4)), max_size=200).map("".join)
_deep = st.integers(min_value=1, max_value=50_000).map(lambda n: "[" * n + "]" * n)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.one_of(_json_like, _deep, st.binary(max_size=200)))
def test_decoder_refuses_with_a_bounded_reason_or_decodes_shallow_json(data: str | bytes) -> None:
    try:
        value = decode_json(data)
    except DecodeError as exc:
        assert exc.reason in ("not_json", "too_deep", "too_large")
        return
    verdict = Filter("id").classify_value(value)
    str(verdict)
    json.dumps(value)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    secret=st.text(min_size=4, max_size=30).filter(lambda s: s.strip() == s and " " not in s),
    before=st.text(max_size=300),
    after=st.text(max_size=300),
)
def test_redaction_never_lets_a_secret_through(secret: str, before: str, after: str) -> None:
    redact = Redactor([f"Bearer {secret}"])
    out = redact(before + secret + after)
    assert secret not in out or secret in REDACTED
    assert len(out) <= MAX_TEXT + 3
    assert not any(ord(c) < 0x20 for c in out)
