"""Hostile configs: every way a file can crash or explode the loader ends in a ConfigError.

Each case names the path and line (where there is one) and the limit it hit; a hypothesis fuzzer
throws arbitrary YAML-ish text at the loader and message templates and allows no other exception.
"""

from __future__ import annotations

import os
import stat
import string
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from probed.config import ConfigError, ConfigIssue, load_config, parse_config
from probed.config.files import MAX_SECRET_BYTES
from probed.config.loading import MAX_CONFIG_BYTES
from probed.config.schema.root import MAX_SESSIONS
from probed.template import Template, TemplateError
from tests.conftest import bound


def issues(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="<test>")
    return caught.value.issues


def one_issue(text: str) -> ConfigIssue:
    found = issues(text)
    assert len(found) == 1, found
    return found[0]


def probe(extra: str = "") -> str:
    return "probes:\n  - name: p\n    kind: echo\n    url: ws://127.0.0.1:1/\n" + "".join(
        f"    {line}\n" for line in extra.splitlines()
    )


def test_date_like_typo_is_an_error_with_path_and_line() -> None:
    issue = one_issue("global:\n  labels:\n    deployed: 2024-13-45\n")
    assert (issue.path, issue.line) == ("global.labels.deployed", 3)
    assert "not a valid one; quote it" in issue.message


def test_five_thousand_digit_integer_is_an_error_with_path_and_line() -> None:
    issue = one_issue(probe("interval: " + "9" * 5000))
    assert (issue.path, issue.line) == ("probes[0].interval", 5)
    assert "9999" not in issue.message


@pytest.mark.parametrize("opening", ["[", "{a: "])
def test_deep_nesting_is_an_error_with_a_line(opening: str) -> None:
    closing = "]" if opening == "[" else "}"
    issue = one_issue("global:\n  labels: " + opening * 5000 + "1" + closing * 5000 + "\n")
    assert issue.line == 2 and "nest deeper than" in issue.message


def test_deep_block_nesting_is_refused_by_the_composer() -> None:
    text = "".join("  " * level + f"k{level}:\n" for level in range(100)) + "  " * 100 + "x: 1\n"
    issue = one_issue(text)
    assert "nest deeper than 64 levels" in issue.message and issue.line is not None


def test_aliases_of_a_long_string_are_bounded_in_bytes() -> None:
    text = 'a: &a "' + "$$" * 4000 + '"\n'
    text += "b: &b [" + ", ".join(["*a"] * 100) + "]\n"
    text += "c: &c [" + ", ".join(["*b"] * 100) + "]\n"
    text += "d: [" + ", ".join(["*c"] * 100) + "]\n"
    assert len(text) < 10_000
    started = time.perf_counter()
    issue = one_issue(text)
    assert time.perf_counter() - started < bound(5)
    assert "too large once aliases are expanded" in issue.message and "MiB" in issue.message


def test_a_file_over_the_size_limit_is_refused_naming_the_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 10))
    with pytest.raises(ConfigError) as caught:
        load_config(big)
    assert "larger than 2 MiB" in str(caught.value)


def test_bracket_floods_are_refused_before_scanning() -> None:
    text = "".join(f"a{i}: " + "[" * 10 + "]" * 10 + "\n" for i in range(25_000))
    started = time.perf_counter()
    assert "[ or {" in one_issue(text).message
    assert time.perf_counter() - started < bound(2)


def test_token_file_that_is_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    issue = one_issue(probe(f"bearer_token_file: {fifo}"))
    assert issue.path == "probes[0].bearer_token_file"
    assert "not a regular file" in issue.message


def test_token_file_linked_to_dev_zero_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "token"
    link.symlink_to("/dev/zero")
    issue = one_issue(probe(f"bearer_token_file: {link}"))
    assert "not a regular file" in issue.message


def test_token_file_too_large_is_refused_naming_the_limit(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_bytes(b"a" * (MAX_SECRET_BYTES + 1))
    issue = one_issue(probe(f"bearer_token_file: {token}"))
    assert "larger than 64 KiB" in issue.message


def test_readable_token_file_warns_once(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("sekrit-token\n")
    token.chmod(0o644)
    text = probe(f"bearer_token_file: {token}")
    with capture_logs() as logged:
        parse_config(text)
        parse_config(text)
    warned = [e for e in logged if "readable by group or others" in e["event"]]
    assert len(warned) == 1 and warned[0]["path"] == str(token)
    assert "sekrit" not in str(logged)
    token.chmod(stat.S_IRUSR | stat.S_IWUSR)
    private = tmp_path / "private"
    private.write_text("x-token\n")
    private.chmod(0o600)
    with capture_logs() as logged:
        parse_config(probe(f"bearer_token_file: {private}"))
    assert not logged


def test_tls_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "ca.pem"
    os.mkfifo(fifo)
    text = probe(f"tls: {{ca_file: {fifo}}}").replace("ws://", "wss://")
    issue = one_issue(text)
    assert issue.path == "probes[0].tls.ca_file" and "not a regular file" in issue.message


def test_total_sessions_are_bounded() -> None:
    entries = "".join(
        f"  - {{name: p{i}, kind: echo, url: 'ws://127.0.0.1:1/'}}\n"
        for i in range(MAX_SESSIONS + 1)
    )
    found = issues("probes:\n" + entries)
    assert any(i.path == "probes" and f"at most {MAX_SESSIONS}" in i.message for i in found)


# -- fuzzing -----------------------------------------------------------------------------------

_YAML_BITS = st.sampled_from(
    [
        "probes:",
        "global:",
        "  - ",
        "name: p",
        "kind: echo",
        "url: ws://127.0.0.1:1/",
        "interval: ",
        "1s",
        "2024-13-45",
        "9" * 5000,
        "&a ",
        "*a",
        "<<: *a",
        "[",
        "]",
        "{",
        "}",
        "${HOME}",
        "$$",
        "${",
        "!!binary ",
        "!!timestamp x",
        "!!int x",
        "!!float 1e9999",
        "? ",
        "---",
        "\t",
        ": ",
        '"',
        "'",
        "\\x",
        "\n",
        "    ",
        "labels: {a: ",
        "connection: {keepalive: ",
        "message: {template: ",
    ]
)
_yaml_text = st.lists(st.one_of(_YAML_BITS, st.text(max_size=8)), max_size=40).map("".join)


@settings(
    max_examples=int(os.environ.get("PROBED_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(_yaml_text)
def test_fuzzed_configs_fail_only_with_config_error(text: str) -> None:
    try:
        parse_config(text, env={"HOME": "/root"})
    except ConfigError as exc:
        assert all(isinstance(i.message, str) for i in exc.issues)
        str(exc)


@settings(max_examples=int(os.environ.get("PROBED_FUZZ_EXAMPLES", "300")), deadline=None)
@given(
    st.lists(
        st.sampled_from([*string.printable, "{id}", "{seq}", "{probe}", "{", "}", "é", "\x00"]),
        max_size=60,
    ).map("".join)
)
def test_fuzzed_message_templates_render_or_are_refused(template: str) -> None:
    values = {"id": "I", "seq": "7", "send_time": "1.0", "probe": "p"}
    try:
        rendered = Template(template).render(values)
    except TemplateError:
        # An unknown {name}: refused, and `probed check` refuses the same template below.
        rendered = ""
    assert "{id}" not in rendered and "{seq}" not in rendered
    escaped = template.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    escaped = escaped.replace("\x00", "\\0")
    try:
        parse_config(
            probe(f'message: {{template: "{escaped}", match: {{raw: true}}}}'), source="<fuzz>"
        )
    except ConfigError as exc:
        str(exc)
