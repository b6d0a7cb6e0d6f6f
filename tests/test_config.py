"""Tests for probed.config: schema, durations, YAML locations, env expansion and secrets."""

import json
import re
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from probed.config import (
    DURATION_PATTERN,
    PROBE_KINDS,
    RESERVED_LABEL_NAMES,
    Config,
    ConfigError,
    ConfigIssue,
    ConnectionConfig,
    EchoProbeConfig,
    GlobalConfig,
    KeepaliveConfig,
    MatchConfig,
    MessageConfig,
    ReconnectConfig,
    SloConfig,
    TlsConfig,
    config_json_schema,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
)

CANARY = "canary-s3cr3t-XYZ"
KNOWN = ", ".join(PROBE_KINDS)

# Line 1 "probes:", line 2 "- name", line 3 kind, line 4 url; probe() extras start on line 5.
PROBE_HEAD = """\
probes:
  - name: echo
    kind: echo
    url: {url}
"""


def probe(extra: str = "", url: str = "wss://echo.example.com/ws") -> str:
    body = textwrap.indent(textwrap.dedent(extra).strip("\n"), "    ")
    return PROBE_HEAD.format(url=url) + (body + "\n" if body else "")


def issues_of(text: str, env: dict[str, str] | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env={} if env is None else env)
    return caught.value.issues


def one_issue(text: str, env: dict[str, str] | None = None) -> ConfigIssue:
    issues = issues_of(text, env)
    assert len(issues) == 1, issues
    return issues[0]


def echo(probe: object) -> EchoProbeConfig:
    assert isinstance(probe, EchoProbeConfig)
    return probe


def first_probe(text: str, env: dict[str, str] | None = None) -> EchoProbeConfig:
    config = parse_config(text, env={} if env is None else env)
    return echo(config.probes[0])


# --- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h30m", 5400.0),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("250μs", 0.00025),
        ("10ns", 1e-8),
        (".5s", 0.5),
        ("0.1s", 0.1),
        ("1h1m1s1ms", 3661.001),
        (" 2s ", 2.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration_good(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("5", 'needs a unit, e.g. 500ms or 2s (got "5")'),
        ("2.5", "needs a unit"),
        ("1e3", "needs a unit"),
        ("", "empty duration"),
        ("   ", "empty duration"),
        ("-5s", "cannot be negative"),
        ("5 s", "not a duration"),
        ("5S", "not a duration"),
        ("5x", "not a duration"),
        ("s", "not a duration"),
        ("1h-30m", "not a duration"),
        ("1.5.2s", "not a duration"),
        ("inf", "not a duration"),
        ("nan", "not a duration"),
        ("5sec", "not a duration"),
    ],
)
def test_parse_duration_bad(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [0.5, 1.5, 120.0, 5400.0, 0.00025, 1e-9, 3661.001, 90.5, 0.1])
def test_format_duration_round_trips(seconds: float) -> None:
    text = format_duration(seconds)
    assert re.fullmatch(DURATION_PATTERN, text)
    assert parse_duration(text) == seconds


def test_format_duration_is_readable() -> None:
    assert format_duration(5400) == "1h30m"
    assert format_duration(0.05) == "50ms"
    assert format_duration(0) == "0s"


def test_bare_number_in_config_is_rejected_with_path_and_line() -> None:
    issue = one_issue(probe("interval: 5"))
    assert issue == ConfigIssue("probes[0].interval", 5, 'needs a unit, e.g. 500ms or 2s (got "5")')


def test_bad_duration_line() -> None:
    text = probe(
        """
        connection:
          keepalive:
            interval: 15 seconds
        """
    )
    issue = one_issue(text)
    assert issue.path == "probes[0].connection.keepalive.interval"
    assert issue.line == 7
    assert issue.message.startswith("not a duration")


@pytest.mark.parametrize("value", ["0s", "0ms"])
def test_zero_duration_is_rejected(value: str) -> None:
    issue = one_issue(probe(f"timeout: {value}"))
    assert (issue.path, issue.message) == ("probes[0].timeout", "must be longer than 0s")


def test_boolean_duration_is_rejected() -> None:
    issue = one_issue(probe("interval: true"))
    assert issue.path == "probes[0].interval"
    assert "expected a duration" in issue.message


def test_durations_parse_into_seconds() -> None:
    got = first_probe(probe("interval: 250ms\ntimeout: 1m\nslo: {latency: 20ms}"))
    assert (got.interval, got.timeout, got.slo.latency) == (0.25, 60.0, 0.02)


def test_code_may_build_models_with_plain_seconds() -> None:
    # Bare numbers are refused only in config files; code passes seconds or timedeltas.
    assert KeepaliveConfig(interval=5).interval == 5.0
    assert ReconnectConfig.model_validate({"initial": timedelta(milliseconds=250)}).initial == 0.25
    with pytest.raises(ValidationError, match="must be longer than 0s"):
        KeepaliveConfig(interval=0)
    with pytest.raises(ValidationError, match="must be longer than 0s"):
        KeepaliveConfig(interval=float("nan"))


def test_durations_dump_as_strings_and_round_trip() -> None:
    config = parse_config(
        probe("interval: 1500ms\nconnection: {churn: 1h30m}")
        + "global:\n  loop_lag_threshold: 20ms\n"
    )
    dumped = config.model_dump(mode="json", by_alias=True)
    assert dumped["probes"][0]["interval"] == "1s500ms"
    assert dumped["probes"][0]["connection"]["churn"] == "1h30m"
    assert dumped["global"]["loop_lag_threshold"] == "20ms"
    assert parse_config(yaml.safe_dump(dumped)) == config


# --- locations of structural errors -----------------------------------------------------------


def test_unknown_key_names_path_and_line_and_suggests() -> None:
    text = probe(
        """
        connection:
          keepalive:
            intervall: 5s
        """
    )
    issue = one_issue(text)
    assert issue == ConfigIssue(
        "probes[0].connection.keepalive.intervall", 7, 'unknown key (did you mean "interval"?)'
    )


def test_unknown_key_without_close_match() -> None:
    issue = one_issue("global:\n  colour: blue\n")
    assert issue == ConfigIssue("global.colour", 2, "unknown key")


def test_unknown_top_level_key_and_python_name_of_global() -> None:
    issues = issues_of("globals: {}\nglobal_: {}\n")
    assert [(i.path, i.line) for i in issues] == [("globals", 1), ("global_", 2)]
    assert issues[0].message == 'unknown key (did you mean "global"?)'


def test_wrong_type_line() -> None:
    assert issues_of(probe("subprotocols: chat\ntls: yes")) == [
        ConfigIssue("probes[0].subprotocols", 5, "expected a list"),
        ConfigIssue("probes[0].tls", 6, "expected a mapping"),
    ]


def test_unquoted_number_for_string_says_quote_it() -> None:
    issue = one_issue(probe("headers:\n  X-Version: 2"))
    assert issue.path == "probes[0].headers.X-Version"
    assert issue.line == 6
    assert issue.message == "expected a string; YAML read this as a number, so quote it"


def test_unquoted_date_for_string_says_quote_it() -> None:
    issue = one_issue(probe().replace("name: echo", "name: 2024-05-01"))
    assert issue == ConfigIssue(
        "probes[0].name", 2, "expected a string; YAML read this as a date, so quote it"
    )


def test_missing_required_key_points_at_parent_mapping() -> None:
    text = "global:\n  listen: 127.0.0.1:9464\nprobes:\n  - name: echo\n    kind: echo\n"
    assert one_issue(text) == ConfigIssue("probes[0].url", 4, "required key is missing")


def test_invalid_yaml_line() -> None:
    text = "global:\n  listen: 127.0.0.1:9464\n  labels: {a: b\nprobes: []\n"
    issue = one_issue(text)
    assert issue.path == ""
    assert issue.line == 4
    assert issue.message.startswith("invalid YAML:")


def test_invalid_yaml_tab_indent() -> None:
    issue = one_issue("global:\n\tlisten: x\n")
    assert issue.line == 2
    assert "invalid YAML" in issue.message


def test_duplicate_key_is_an_error() -> None:
    text = probe("interval: 1s\ntimeout: 2s\ninterval: 2s")
    assert one_issue(text) == ConfigIssue(
        "probes[0].interval", 7, "duplicate key (first set on line 5)"
    )


def test_duplicate_probe_name_points_at_second() -> None:
    text = probe() + "  - name: echo\n    kind: echo\n    url: ws://other/\n"
    assert one_issue(text) == ConfigIssue(
        "probes[1].name", 5, 'duplicate probe name "echo" (first used by probes[0])'
    )


def test_unknown_kind_lists_known_kinds() -> None:
    text = "probes:\n  - name: echo\n    kind: websockt\n    url: ws://x/\n"
    assert one_issue(text) == ConfigIssue(
        "probes[0].kind", 3, 'unknown probe kind "websockt"; known kinds: ' + KNOWN
    )


def test_missing_kind() -> None:
    text = "probes:\n  - name: echo\n    url: ws://x/\n"
    assert one_issue(text) == ConfigIssue(
        "probes[0].kind", 2, "required key is missing; known kinds: " + KNOWN
    )


def test_probe_kinds_come_from_the_union() -> None:
    assert PROBE_KINDS["echo"] is EchoProbeConfig


def test_every_error_is_reported_in_file_order() -> None:
    text = (
        "probes:\n"
        "  - name: a\n"
        "    kind: echo\n"
        "    url: http://a/\n"  # 4
        "    interval: 5\n"  # 5
        "  - name: b\n"
        "    kind: nope\n"  # 7
        "global:\n"
        "  listen: nowhere\n"  # 9
        "  log_level: loud\n"  # 10
    )
    issues = issues_of(text)
    assert [(i.path, i.line) for i in issues] == [
        ("probes[0].url", 4),
        ("probes[0].interval", 5),
        ("probes[1].kind", 7),
        ("global.listen", 9),
        ("global.log_level", 10),
    ]
    assert issues[4].message == "must be one of 'debug', 'info', 'warning' or 'error'"


def test_error_str_format() -> None:
    error = ConfigError(
        [ConfigIssue("probes[1].interval", 12, "bad"), ConfigIssue("", None, "whole file")],
        "/etc/probed.yaml",
    )
    assert str(error) == (
        "/etc/probed.yaml:12: probes[1].interval: bad\n/etc/probed.yaml: whole file"
    )


def test_error_str_from_parse() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(probe("interval: 5"), source="probed.yaml", env={})
    assert str(caught.value) == (
        'probed.yaml:5: probes[0].interval: needs a unit, e.g. 500ms or 2s (got "5")'
    )
    assert caught.value.source == "probed.yaml"


def test_error_is_not_chained_to_pydantic_error() -> None:
    # A chained ValidationError would print input values (secrets) in tracebacks.
    with pytest.raises(ConfigError) as caught:
        parse_config(probe("interval: 5"), env={})
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


def test_yaml_merge_keys_work_and_errors_point_at_the_anchor() -> None:
    text = (
        "probes:\n"
        "  - &base\n"
        "    name: a\n"
        "    kind: echo\n"
        "    url: ws://h/\n"
        "    interval: 2s\n"
        "  - <<: *base\n"
        "    name: b\n"
    )
    config = parse_config(text, env={})
    assert [(p.name, p.interval) for p in config.probes] == [("a", 2.0), ("b", 2.0)]
    bad = text.replace("interval: 2s", "interval: 2")
    assert [(i.path, i.line) for i in issues_of(bad)] == [
        ("probes[0].interval", 6),
        ("probes[1].interval", 6),
    ]


def test_recursive_alias_is_an_error() -> None:
    issue = one_issue("global: &a\n  labels: *a\n")
    assert (issue.path, issue.line) == ("global.labels", 1)


def test_alias_bombs_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    issue = one_issue("\n".join(lines) + "\n")
    assert "too large" in issue.message


def test_custom_tags_are_errors() -> None:
    issue = one_issue("global:\n  listen: !env LISTEN\n")
    assert issue == ConfigIssue("global.listen", 2, "unsupported YAML tag !env")


# --- whole documents --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "{}\n"])
def test_empty_config_is_valid(text: str) -> None:
    config = parse_config(text, env={})
    assert config.probes == []
    assert config.global_ == GlobalConfig()


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    issue = one_issue(text)
    assert issue.line == 1
    assert "must be a mapping" in issue.message


def test_several_documents_are_an_error() -> None:
    issue = one_issue("probes: []\n---\nprobes: []\n")
    assert issue.line == 2
    assert "invalid YAML" in issue.message


def test_full_example_parses() -> None:
    text = textwrap.dedent(
        """\
        global:
          listen: "[::1]:9464"
          labels: {location: eu-west-1}
          log_level: debug
          loop_lag_threshold: 25ms
        probes:
          - name: chat-echo
            kind: echo
            url: wss://chat.example.com/ws
            headers: {X-Api-Key: "${CHAT_TOKEN}"}
            subprotocols: [chat.v1]
            interval: 1s
            timeout: 5s
            message: {template: '{"type":"ping","id":"{id}"}', match: {json: id}}
            connection:
              keepalive: {mode: message, message: '{"type":"hb"}', interval: 20s}
              reconnect: {initial: 500ms, max: 30s}
              churn: 10m
            slo: {latency: 50ms}
        """
    )
    config = parse_config(text, env={"CHAT_TOKEN": "t0k"})
    assert config.global_.listen_address == ("::1", 9464)
    assert config.global_.labels == {"location": "eu-west-1"}
    assert config.global_.log_level == "debug"
    assert config.global_.loop_lag_threshold == 0.025
    got = echo(config.probes[0])
    assert got.kind == "echo"
    assert got.subprotocols == ["chat.v1"]
    assert got.message.match == MatchConfig(json="id")
    assert got.connection.keepalive == KeepaliveConfig(
        mode="message", message='{"type":"hb"}', interval=20
    )
    assert got.connection.churn == 600.0
    assert got.request_headers() == {"X-Api-Key": "t0k"}


def test_defaults() -> None:
    got = first_probe(probe())
    assert (got.interval, got.timeout, got.slo.latency) == (1.0, 5.0, 0.05)
    assert got.connection == ConnectionConfig(
        connect_timeout=10,
        keepalive=KeepaliveConfig(mode="ping", interval=15, timeout=10),
        reconnect=ReconnectConfig(initial=0.5, max=30, reset_after=30),
        churn=None,
        close_timeout=2,
    )
    assert got.message.template == '{"type":"ping","id":"{id}","seq":{seq},"sent_at":{send_time}}'
    assert got.message.match.json_ == "id"
    assert got.message.match.raw is False
    assert got.tls == TlsConfig()
    assert got.headers == {}
    assert got.request_headers() == {}
    assert Config().global_ == GlobalConfig(
        listen="127.0.0.1:9464", labels={}, log_level="info", loop_lag_threshold=0.05
    )


def test_models_are_frozen() -> None:
    got = first_probe(probe())
    with pytest.raises(ValidationError):
        got.interval = 2.0


# --- environment variables --------------------------------------------------------------------


def test_env_expansion_in_string_values() -> None:
    text = probe(
        """
        headers:
          X-Token: "Bearer ${TOKEN}"
          X-Price: "$$5 and $HOME stays"
        interval: ${IVAL}
        """,
        url="wss://${HOST}:8443/ws",
    )
    got = first_probe(text, env={"TOKEN": "abc", "IVAL": "250ms", "HOST": "h.example"})
    assert got.request_headers() == {"X-Token": "Bearer abc", "X-Price": "$5 and $HOME stays"}
    assert got.interval == 0.25
    assert got.target == "wss://h.example:8443/ws"


def test_env_is_not_expanded_in_keys() -> None:
    issue = one_issue("global:\n  labels:\n    ${NAME}: x\n", env={"NAME": "region"})
    assert issue.path == 'global.labels["${NAME}"]'
    assert issue.line == 3


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBED_TEST_REGION", "eu-west-1")
    config = parse_config("global:\n  labels: {region: '${PROBED_TEST_REGION}'}\n")
    assert config.global_.labels == {"region": "eu-west-1"}


def test_unset_env_var_is_an_error_without_follow_on_errors() -> None:
    # The unexpanded url would also fail url validation; only the root cause is reported.
    text = probe("headers: {X-Token: '${TOKEN}'}", url="${PROBE_URL}")
    issues = issues_of(text, env={"TOKEN": "x"})
    assert issues == [
        ConfigIssue("probes[0].url", 4, "environment variable PROBE_URL is not set"),
    ]


def test_every_unset_env_var_is_reported() -> None:
    issues = issues_of("global:\n  labels: {a: '${A}-${B}', c: '${C}'}\n", env={"B": "b"})
    assert [i.message for i in issues] == [
        "environment variable A is not set",
        "environment variable C is not set",
    ]
    assert {i.line for i in issues} == {2}


def test_empty_env_var_is_set() -> None:
    got = first_probe(probe("headers: {X-Maybe: 'v${SUFFIX}'}"), env={"SUFFIX": ""})
    assert got.request_headers() == {"X-Maybe": "v"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${bad-name}", '"${bad-name}" is not a valid environment variable reference'),
        ("${}", '"${}" is not a valid environment variable reference'),
        ("${OPEN", "unterminated ${ (write $$ for a literal $)"),
    ],
)
def test_bad_env_references(value: str, message: str) -> None:
    assert one_issue(f"global:\n  listen: '{value}'\n") == ConfigIssue("global.listen", 2, message)


def test_double_dollar_before_brace_is_literal() -> None:
    config = parse_config("global:\n  labels: {a: '$${NOT_EXPANDED}'}\n", env={})
    assert config.global_.labels == {"a": "${NOT_EXPANDED}"}


# --- bearer tokens ----------------------------------------------------------------------------


def test_bearer_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  tok-123\n")
    got = first_probe(probe(f"bearer_token_file: {token}"))
    assert got.bearer_token_file == token
    assert got.request_headers() == {"Authorization": "Bearer tok-123"}


def test_bearer_token_inline_from_env() -> None:
    got = first_probe(probe("bearer_token: ${TOKEN}"), env={"TOKEN": "abc"})
    assert got.request_headers() == {"Authorization": "Bearer abc"}


def test_relative_file_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("rel-token\n")
    config_file = tmp_path / "probed.yaml"
    config_file.write_text(probe("bearer_token_file: secrets/token"))
    got = echo(load_config(config_file, env={}).probes[0])
    assert got.bearer_token_file == tmp_path / "secrets" / "token"
    assert got.request_headers()["Authorization"] == "Bearer rel-token"


def test_missing_bearer_token_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    issue = one_issue(probe(f"interval: 1s\nbearer_token_file: {missing}"))
    assert issue == ConfigIssue("probes[0].bearer_token_file", 6, f"file {missing} does not exist")


def test_bearer_token_file_that_is_a_directory(tmp_path: Path) -> None:
    issue = one_issue(probe(f"bearer_token_file: {tmp_path}"))
    assert (issue.path, issue.line) == ("probes[0].bearer_token_file", 5)
    assert "is a directory" in issue.message


def test_empty_bearer_token_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("\n")
    issue = one_issue(probe(f"bearer_token_file: {token}"))
    assert issue == ConfigIssue("probes[0].bearer_token_file", 5, "the bearer token is empty")


def test_bearer_token_and_file_are_exclusive(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("x")
    issue = one_issue(probe(f"bearer_token: abc\nbearer_token_file: {token}"))
    assert issue == ConfigIssue(
        "probes[0].bearer_token_file", 6, "set bearer_token or bearer_token_file, not both"
    )


def test_bearer_token_conflicts_with_authorization_header() -> None:
    issue = one_issue(probe("bearer_token: abc\nheaders: {authorization: Basic xyz}"))
    assert (issue.path, issue.line) == ("probes[0].headers.authorization", 6)


def test_empty_bearer_token_from_env() -> None:
    issue = one_issue(probe("bearer_token: '${TOKEN}'"), env={"TOKEN": ""})
    assert issue == ConfigIssue("probes[0].bearer_token", 5, "the bearer token is empty")


# --- tls --------------------------------------------------------------------------------------


def test_tls_files_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    cert = tmp_path / "cert.pem"
    cert.write_text("pem")
    text = probe(
        f"""
        tls:
          ca_file: {ca}
          cert_file: {cert}
          key_file: {tmp_path / "missing.key"}
        """
    )
    assert one_issue(text) == ConfigIssue(
        "probes[0].tls.key_file", 8, f"file {tmp_path / 'missing.key'} does not exist"
    )


def test_tls_files_ok(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("pem")
    text = probe(
        f"""
        tls:
          ca_file: {tmp_path / "ca.pem"}
          cert_file: {tmp_path / "cert.pem"}
          key_file: {tmp_path / "key.pem"}
          server_name: internal.example
          insecure_skip_verify: false
        """
    )
    tls = first_probe(text).tls
    assert tls.ca_file == tmp_path / "ca.pem"
    assert tls.key_file == tmp_path / "key.pem"
    assert tls.server_name == "internal.example"


def test_tls_key_file_needs_cert_file(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("pem")
    issue = one_issue(probe(f"tls:\n  key_file: {key}"))
    assert (issue.path, issue.line) == ("probes[0].tls.key_file", 6)
    assert "needs cert_file" in issue.message


def test_tls_options_need_wss() -> None:
    issue = one_issue(probe("tls: {insecure_skip_verify: true}", url="ws://echo.example.com/"))
    assert issue == ConfigIssue("probes[0].tls", 5, "tls options need a wss:// url")


def test_empty_tls_block_with_ws_is_fine() -> None:
    assert first_probe(probe("tls: {}", url="ws://echo.example.com/")).tls == TlsConfig()


def test_tls_server_name_must_be_a_name() -> None:
    issue = one_issue(probe("tls: {server_name: 'a b'}"))
    assert issue.path == "probes[0].tls.server_name"


# --- semantic checks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("keepalive: 20s", KeepaliveConfig(interval=20)),
        ("keepalive: off", KeepaliveConfig(mode="off")),
        ("keepalive: 'off'", KeepaliveConfig(mode="off")),
    ],
)
def test_keepalive_shorthands(written: str, expected: KeepaliveConfig) -> None:
    got = first_probe(probe(f"connection:\n  {written}"))
    assert got.connection.keepalive == expected


def test_keepalive_shorthand_with_a_bad_duration_names_the_key() -> None:
    issue = one_issue(probe("connection:\n  keepalive: 20"))
    assert issue.path.startswith("probes[0].connection.keepalive")
    assert issue.line == 6


def test_keepalive_shorthands_are_in_the_json_schema() -> None:
    text = json.dumps(config_json_schema()["$defs"]["ConnectionConfig"]["properties"]["keepalive"])
    assert "anyOf" in text and "pattern" in text and "KeepaliveConfig" in text


def test_keepalive_message_required_for_message_mode() -> None:
    issue = one_issue(probe("connection:\n  keepalive: {mode: message}"))
    assert issue == ConfigIssue(
        "probes[0].connection.keepalive.message", 6, 'required when mode is "message"'
    )


def test_keepalive_message_only_for_message_mode() -> None:
    issue = one_issue(probe("connection:\n  keepalive:\n    message: hi"))
    assert issue == ConfigIssue(
        "probes[0].connection.keepalive.message",
        7,
        'only used when mode is "message" (mode is "ping")',
    )


def test_keepalive_mode_off_unquoted() -> None:
    # YAML 1.1 reads bare `off` as false.
    got = first_probe(probe("connection:\n  keepalive: {mode: off}"))
    assert got.connection.keepalive.mode == "off"


def test_keepalive_bad_mode() -> None:
    issue = one_issue(probe("connection:\n  keepalive: {mode: pong}"))
    assert issue.path == "probes[0].connection.keepalive.mode"
    assert issue.message == "must be one of 'ping', 'message' or 'off'"


def test_reconnect_initial_must_not_exceed_max() -> None:
    issue = one_issue(probe("connection:\n  reconnect: {initial: 1m, max: 30s}"))
    assert issue == ConfigIssue(
        "probes[0].connection.reconnect.initial",
        6,
        "must not be longer than max (1m > 30s)",
    )
    assert first_probe(probe("connection:\n  reconnect: {initial: 30s, max: 30s}"))


@pytest.mark.parametrize(("churn", "ok"), [("999ms", False), ("1s", True), ("10m", True)])
def test_churn_minimum(churn: str, ok: bool) -> None:
    text = probe(f"connection:\n  churn: {churn}")
    if ok:
        assert first_probe(text).connection.churn == parse_duration(churn)
    else:
        assert one_issue(text) == ConfigIssue(
            "probes[0].connection.churn", 6, "must be at least 1s"
        )


def test_match_needs_exactly_one_of_json_and_raw() -> None:
    both = one_issue(probe("message:\n  match: {json: id, raw: true}"))
    assert both == ConfigIssue("probes[0].message.match", 6, "set either json or raw, not both")
    neither = one_issue(probe("message:\n  match: {}"))
    assert (neither.path, neither.line) == ("probes[0].message.match", 6)
    assert "set json" in neither.message


@pytest.mark.parametrize("path", ["data..id", ".id", "id.", ""])
def test_match_json_path_must_be_dotted_names(path: str) -> None:
    issue = one_issue(probe(f"message:\n  match: {{json: '{path}'}}"))
    assert issue.path == "probes[0].message.match.json"


def test_match_json_dotted_path_ok() -> None:
    got = first_probe(
        probe("""message: {template: '{"data":{"id":"{id}"}}', match: {json: data.id}}""")
    )
    assert got.message.match.json_ == "data.id"


def test_template_needs_id_for_json_match() -> None:
    issue = one_issue(probe("""message: {template: '{"seq":{seq}}'}"""))
    assert issue == ConfigIssue(
        "probes[0].message.template",
        5,
        "must contain {id} when replies are matched by a JSON field",
    )


def test_template_needs_id_or_seq_for_raw_match() -> None:
    issue = one_issue(probe("message: {template: hello, match: {raw: true}}"))
    assert (issue.path, issue.line) == ("probes[0].message.template", 5)
    assert "{id} or {seq}" in issue.message
    ok = first_probe(probe("message: {template: 'hello {seq}', match: {raw: true}}"))
    assert ok.message == MessageConfig(template="hello {seq}", match=MatchConfig(raw=True))


def test_slo_latency_must_not_exceed_timeout() -> None:
    issue = one_issue(probe("timeout: 100ms\nslo: {latency: 200ms}"))
    assert issue == ConfigIssue(
        "probes[0].slo.latency",
        6,
        "must not be longer than timeout (100ms): a reply slower than timeout is already lost",
    )
    assert first_probe(probe("timeout: 200ms\nslo: {latency: 200ms}")).slo == SloConfig(latency=0.2)


@pytest.mark.parametrize(
    ("interval", "timeout", "expected"),
    [
        ("1s", "5s", 6),
        ("1s", "4500ms", 6),
        ("100ms", "1.1s", 12),
        ("30ms", "900ms", 31),
        ("2s", "1s", 2),
        ("3s", "3s", 2),
    ],
)
def test_max_in_flight(interval: str, timeout: str, expected: int) -> None:
    got = first_probe(probe(f"interval: {interval}\ntimeout: {timeout}"))
    assert got.max_in_flight == expected


def test_max_in_flight_limit() -> None:
    at_limit = first_probe(probe("interval: 1ms\ntimeout: 9999ms\nslo: {latency: 1ms}"))
    assert at_limit.max_in_flight == 10_000
    issue = one_issue(probe("interval: 1ms\ntimeout: 10s\nslo: {latency: 1ms}"))
    assert (issue.path, issue.line) == ("probes[0].interval", 5)
    assert issue.message.startswith("timeout/interval would keep 10001 messages in flight")


@pytest.mark.parametrize("name", ["a", "chat-echo", "eu_1.echo:v2", "A" * 63, "9lives"])
def test_probe_name_ok(name: str) -> None:
    assert first_probe(probe().replace("name: echo", f"name: '{name}'")).name == name


@pytest.mark.parametrize("name", ["", "-x", "_x", "a b", "a/b", "A" * 64, "ünï"])
def test_probe_name_bad(name: str) -> None:
    issue = one_issue(probe().replace("name: echo", f"name: '{name}'"))
    assert (issue.path, issue.line) == ("probes[0].name", 2)
    assert "letters, digits" in issue.message


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://echo.example.com/", "must be a ws:// or wss:// URL"),
        ("echo.example.com/ws", "must be a ws:// or wss:// URL"),
        ("ws:///path", "has no host"),
        ("ws://echo.example.com:99999/", "is not a valid URL (check the host and port)"),
        ("ws://echo.example.com:0/", "has an invalid port"),
        ("ws://echo.example.com/ws#frag", "must not have a #fragment"),
        ("'ws://echo.example.com/a b'", "must be a ws:// or wss:// URL without spaces"),
        ("'ws://[::1/'", "is not a valid URL (check the host and port)"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    issue = one_issue(probe(url=url))
    assert (issue.path, issue.line) == ("probes[0].url", 4)
    assert issue.message.startswith(message)


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("wss://user:pa55@chat.example.com:8443/ws?token=abc#x", "wss://chat.example.com:8443/ws"),
        ("ws://chat.example.com/v1/socket?key=abc", "ws://chat.example.com/v1/socket"),
        ("ws://chat.example.com", "ws://chat.example.com/"),
        ("WSS://Chat.Example.COM/Path", "wss://chat.example.com/Path"),
        ("ws://[::1]:9000/echo", "ws://[::1]:9000/echo"),
    ],
)
def test_target_redaction(url: str, target: str) -> None:
    # Built in code: a config file may not carry a fragment.
    got = EchoProbeConfig(kind="echo", name="t", url=url.partition("#")[0])
    assert got.target == target


def test_headers_checks() -> None:
    text = probe(
        """
        headers:
          'Bad Name': x
          Sec-WebSocket-Protocol: chat
          X-Dup: a
          x-dup: b
          X-Inject: "a\\r\\nEvil: 1"
        """
    )
    issues = issues_of(text)
    assert [(i.path, i.line) for i in issues] == [
        ('probes[0].headers["Bad Name"]', 6),
        ("probes[0].headers.Sec-WebSocket-Protocol", 7),
        ("probes[0].headers.x-dup", 9),
        ("probes[0].headers.X-Inject", 10),
    ]
    assert issues[1].message == "is set by the WebSocket handshake; use subprotocols"
    assert issues[2].message == 'same header as "X-Dup" (names are case-insensitive)'
    assert issues[3].message == "value must not contain line breaks or NUL characters"


def test_subprotocol_checks() -> None:
    issues = issues_of(probe("subprotocols: [chat, 'bad name', chat]"))
    assert [(i.path, i.message) for i in issues] == [
        ("probes[0].subprotocols[1]", "is not a valid subprotocol name"),
        ("probes[0].subprotocols[2]", "is listed twice"),
    ]


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        (":9464", ("", 9464)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9464", ("::1", 9464)),
        ("[::]:9464", ("::", 9464)),
        ("probed.internal.example:65535", ("probed.internal.example", 65535)),
    ],
)
def test_listen_ok(listen: str, address: tuple[str, int]) -> None:
    config = parse_config(f"global:\n  listen: '{listen}'\n", env={})
    assert config.global_.listen == listen
    assert config.global_.listen_address == address


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("127.0.0.1", "must be host:port"),
        ("::1:9464", "IPv6 addresses need brackets"),
        ("[::1]", "must be [ipv6-address]:port"),
        ("[nope]:80", "invalid IPv6 address"),
        ("127.0.0.1:65536", "needs a port between 0 and 65535"),
        ("127.0.0.1:http", "needs a port between 0 and 65535"),
        ("127.0.0.1:", "needs a port between 0 and 65535"),
        ("bad host:80", "invalid host"),
        ("-bad:80", "invalid host"),
    ],
)
def test_listen_bad(listen: str, message: str) -> None:
    issue = one_issue(f"global:\n  listen: '{listen}'\n")
    assert (issue.path, issue.line) == ("global.listen", 2)
    assert message in issue.message


@pytest.mark.parametrize("name", sorted(RESERVED_LABEL_NAMES))
def test_reserved_label_names(name: str) -> None:
    issue = one_issue(f"global:\n  labels:\n    {name}: x\n")
    assert (issue.path, issue.line) == (f"global.labels.{name}", 3)
    assert "probed sets itself" in issue.message


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("__meta", "starting with __ are reserved"),
        ("1abc", "must match"),
        ("a-b", "must match"),
        ("'a.b'", "must match"),
    ],
)
def test_bad_label_names(name: str, message: str) -> None:
    issue = one_issue(f"global:\n  labels:\n    {name}: x\n")
    assert issue.line == 3
    assert message in issue.message


def test_label_values_must_not_be_empty() -> None:
    issue = one_issue("global:\n  labels: {region: '${REGION}'}\n", env={"REGION": ""})
    assert issue == ConfigIssue("global.labels.region", 2, "label value must not be empty")


def test_label_keys_are_read_as_written() -> None:
    # YAML 1.1 would make these booleans and a number; every key in the schema is a string.
    config = parse_config("global:\n  labels: {no: a, on: b, _1: c}\n", env={})
    assert config.global_.labels == {"no": "a", "on": "b", "_1": "c"}


# --- secrets ----------------------------------------------------------------------------------


def test_secrets_never_reach_repr_or_errors(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(CANARY + "-file\n")
    env = {"SECRET": CANARY}
    good = (
        "probes:\n"
        "  - name: a\n"
        "    kind: echo\n"
        "    url: wss://h.example/ws?key=${SECRET}\n"
        "    headers: {X-Api-Key: '${SECRET}-header'}\n"
        "    bearer_token: '${SECRET}-bearer'\n"
        "    proxy_url: http://user:${SECRET}@proxy.example:3128\n"
        "  - name: b\n"
        "    kind: echo\n"
        "    url: wss://h.example/ws\n"
        f"    bearer_token_file: {token_file}\n"
    )
    config = parse_config(good, env=env)
    for text in (repr(config), str(config), repr(config.probes[0]), repr(config.probes[1])):
        assert CANARY not in text
    assert config.probes[0].target == "wss://h.example/ws"
    assert echo(config.probes[0]).request_headers() == {
        "X-Api-Key": f"{CANARY}-header",
        "Authorization": f"Bearer {CANARY}-bearer",
    }
    assert echo(config.probes[1]).request_headers() == {"Authorization": f"Bearer {CANARY}-file"}

    # Now every kind of error around those secrets.
    bad = (
        good.replace("wss://h.example/ws?", "http://user:${SECRET}@h.example/ws?")
        .replace("'${SECRET}-header'", '"${SECRET}\\r\\nX: y"')
        .replace("'${SECRET}-bearer'", '"${SECRET} two words"')
        + "    headers: {X-Number: 5, Authorization: '${SECRET}'}\n"
        + "    interval: ${SECRET}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(bad, env=env)
    assert len(caught.value.issues) >= 4
    assert CANARY not in str(caught.value)
    assert CANARY not in repr(caught.value.issues)
    by_path = {i.path: i.message for i in caught.value.issues}
    # A malformed duration is normally echoed, but not when the value came from the environment.
    assert by_path["probes[1].interval"].startswith("not a duration")
    assert "(got" not in by_path["probes[1].interval"]


def test_unknown_kind_from_env_is_not_echoed() -> None:
    text = "probes:\n  - name: a\n    kind: ${KIND}\n    url: ws://h/\n"
    issue = one_issue(text, env={"KIND": CANARY})
    assert issue.message == "unknown probe kind value; known kinds: " + KNOWN


def test_duration_error_echo_is_truncated() -> None:
    issue = one_issue(probe("interval: '" + "x" * 200 + "'"))
    assert len(issue.message) < 200


# --- equality and reload ----------------------------------------------------------------------


def test_same_file_loads_equal(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tok")
    path = tmp_path / "probed.yaml"
    path.write_text(
        probe(f"headers: {{X-Key: '${{KEY}}'}}\nbearer_token_file: {token}")
        + "global:\n  labels: {region: eu}\n"
    )
    first = load_config(path, env={"KEY": "k1"})
    second = load_config(path, env={"KEY": "k1"})
    assert first == second
    assert first.probes[0] == second.probes[0]
    assert first.probes[0] is not second.probes[0]

    # A changed secret is a changed probe: the daemon must restart it with the new value.
    assert load_config(path, env={"KEY": "k2"}).probes[0] != first.probes[0]
    token.write_text("rotated")
    assert load_config(path, env={"KEY": "k1"}).probes[0] != first.probes[0]


def test_unchanged_probe_compares_equal_when_others_change() -> None:
    base = probe() + "  - name: other\n    kind: echo\n    url: ws://o/\n"
    first = parse_config(base, env={})
    second = parse_config(base.replace("ws://o/", "ws://o2/"), env={})
    assert first.probes[0] == second.probes[0]
    assert first.probes[1] != second.probes[1]


# --- files ------------------------------------------------------------------------------------


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    assert caught.value.issues == [
        ConfigIssue("", None, "cannot read the config file: No such file or directory")
    ]
    assert str(caught.value).startswith(f"{path}: cannot read")


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path)


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "probed.yaml"
    path.write_bytes(b"global:\n  listen: \xff\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.issues == [ConfigIssue("", 2, "the file is not UTF-8 text")]


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "probed.yaml"
    path.write_text(probe("interval: 5"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(caught.value).startswith(f"{path}:5: probes[0].interval: needs a unit")


# --- schema -----------------------------------------------------------------------------------


def test_json_schema() -> None:
    schema = config_json_schema()
    round_tripped = json.loads(json.dumps(schema))
    assert round_tripped == schema
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"global", "defaults", "probes"}
    items = schema["properties"]["probes"]["items"]
    assert set(items["discriminator"]["mapping"]) == set(PROBE_KINDS) >= {"echo", "http"}
    probe_schema = schema["$defs"]["EchoProbeConfig"]
    assert probe_schema["properties"]["kind"]["const"] == "echo"
    assert probe_schema["required"] == ["kind", "name", "url"]
    interval = probe_schema["properties"]["interval"]
    assert interval["type"] == "string"
    assert interval["default"] == "1s"
    pattern = re.compile(interval["pattern"])
    assert pattern.match("1h30m")
    assert pattern.match("250us")
    assert not pattern.match("5")
    assert schema["$defs"]["MatchConfig"]["properties"].keys() == {"json", "raw", "where"}
    assert schema["$defs"]["ConnectionConfig"]["properties"]["keepalive"]["default"] == {
        "mode": "ping",
        "interval": "15s",
        "timeout": "10s",
        "message": None,
        "expect": None,
    }


def test_python_construction_uses_field_names_and_aliases() -> None:
    config = Config(
        global_=GlobalConfig(labels={"region": "eu"}),
        probes=[EchoProbeConfig(kind="echo", name="a", url="ws://h/", interval=0.5)],
    )
    assert config.global_.labels == {"region": "eu"}
    assert echo(config.probes[0]).max_in_flight == 11
    with pytest.raises(ValidationError, match=r"slo\.latency: must not be longer than timeout"):
        EchoProbeConfig(kind="echo", name="a", url="ws://h/", timeout=0.1, slo=SloConfig(latency=1))


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_are_inherited_merged_and_overridden() -> None:
    text = textwrap.dedent(
        """\
        defaults:
          connection: {connect_timeout: 3s, keepalive: {interval: 5s}}
          headers: {X-Team: sre}
          timeout: 2s
          message: {template: '{"id":"{id}"}'}
        probes:
          - name: a
            kind: echo
            url: ws://a/
            connection: {keepalive: {timeout: 4s}}
          - name: b
            kind: echo
            url: ws://b/
            timeout: 3s
          - name: api
            kind: http
            url: http://api/
        """
    )
    config = parse_config(text, env={})
    a, b, api = (echo(config.probes[0]), echo(config.probes[1]), config.probes[2])
    # Mappings merge key by key; the probe's own value wins.
    assert a.connection.connect_timeout == 3 and a.connection.keepalive.interval == 5
    assert a.connection.keepalive.timeout == 4
    assert a.timeout == 2 and b.timeout == 3
    assert a.request_headers() == {"X-Team": "sre"}
    assert a.message.template == '{"id":"{id}"}'
    # The http probe takes headers and timeout but has no message: it is not given one.
    assert api.kind == "http" and getattr(api, "timeout") == 2  # noqa: B009


def test_an_error_in_an_inherited_value_points_at_the_defaults_line() -> None:
    text = "defaults:\n  timeout: soon\nprobes:\n  - name: a\n    kind: echo\n    url: ws://a/\n"
    issue = one_issue(text)
    assert issue.path == "probes[0].timeout" and issue.line == 2


def test_a_defaults_key_no_kind_has_is_an_error() -> None:
    text = "defaults:\n  intervall: 1s\nprobes: []\n"
    issue = one_issue(text)
    assert issue.path == "defaults.intervall" and "no probe kind" in issue.message
