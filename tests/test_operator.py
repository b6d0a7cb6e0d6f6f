"""Rough edges a new on-call engineer hit: readable reload logs, hints, warnings, help texts."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from probed import logs
from probed.cli import build_parser, main
from probed.config import ConfigError, TlsConfig, parse_config
from probed.demo import summary
from probed.status import RECENT, ProbeStatus
from probed.targets.echo import EchoTarget
from tests.conftest import RunningDaemon, config, wait_until

StartDaemon = Callable[..., Awaitable[RunningDaemon]]
ROOT = Path(__file__).parent.parent


def probes_yaml(url: str, *names: str, interval: str = "100ms") -> str:
    return "probes:\n" + "".join(
        f"  - {{name: {n}, kind: echo, url: '{url}', interval: {interval}, timeout: 1s}}\n"
        for n in names
    )


def events(buf: io.StringIO, name: str) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in buf.getvalue().splitlines() if line.startswith("{")]
    return [e for e in found if e.get("event") == name]


async def test_reload_log_names_the_probes_and_reads_errors_as_lines(
    tmp_path: Path, echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    buf = io.StringIO()
    logs.configure("info", json=True, stream=buf)
    path = tmp_path / "probed.yaml"
    path.write_text(probes_yaml(echo.url, "keep", "change", "drop"))
    d = await start_daemon(config(path.read_text()), path)
    await wait_until(lambda: echo.sessions == 3, what="three sessions")

    path.write_text(
        probes_yaml(echo.url, "keep", "new") + probes_yaml(echo.url, "change", interval="200ms")[8:]
    )
    ok, message = await d.daemon.reload()
    assert ok
    assert message == "kept: 1, started: 1 (new), restarted: 1 (change), stopped: 1 (drop)"
    (reloaded,) = events(buf, "config reloaded")
    assert (reloaded["kept"], reloaded["started"], reloaded["restarted"]) == (1, 1, 1)
    assert reloaded["started_probes"] == ["new"]
    assert reloaded["restarted_probes"] == ["change"]
    assert reloaded["stopped_probes"] == ["drop"]

    path.write_text(probes_yaml(echo.url, "keep") + "  - {name: x, kind: echo, intervall: 1s}\n")
    ok, message = await d.daemon.reload()
    assert not ok
    (failed,) = events(buf, "reload failed; keeping the running config")
    assert failed["errors"] == [
        f"{path}:3: probes[1].url: required key is missing",
        f'{path}:3: probes[1].intervall: unknown key (did you mean "interval"?)',
    ]
    assert message == "\n".join(failed["errors"])


async def test_an_empty_config_is_called_out_in_check_log_and_page(
    tmp_path: Path, start_daemon: StartDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("global:\n  labels: {location: lab}\n")
    assert main(["check", "-c", str(path)]) == 0
    captured = capsys.readouterr()
    assert "OK, 0 probe(s)" in captured.out
    assert "warning" in captured.err and "has no probes" in captured.err

    assert main(["once", "-c", str(path)]) == 1
    assert "has no probes" in capsys.readouterr().err

    buf = io.StringIO()
    logs.configure("info", json=True, stream=buf)
    await start_daemon(config(path.read_text()), path)
    (warned,) = events(buf, "the config has no probes: nothing is being measured")
    assert warned["level"] == "warning"


def test_yaml_indentation_errors_come_with_a_hint() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("probes:\n  - name: a\n  kind: echo\n", source="c.yaml")
    (line,) = caught.value.lines()
    assert line.startswith("c.yaml:3: invalid YAML: expected <block end>")
    assert "hint: check the indentation of this line" in line

    with pytest.raises(ConfigError) as caught:
        parse_config("probes:\n\t- name: a\n", source="c.yaml")
    assert "hint: YAML indents with spaces only" in str(caught.value)


def test_cross_field_errors_are_reported_with_field_errors() -> None:
    text = """probes:
  - name: a
    kind: echo
    url: ws://127.0.0.1:1/
    timeout: 1s
    colour: blue
    slo: {latency: 2s}
  - name: a
    kind: echo
    url: ws://127.0.0.1:1/
    interval: 5
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="c.yaml")
    assert caught.value.lines() == [
        "c.yaml:6: probes[0].colour: unknown key",
        "c.yaml:7: probes[0].slo.latency: must not be longer than timeout (1s): "
        "a reply slower than timeout is already lost",
        'c.yaml:8: probes[1].name: duplicate probe name "a" (first used by probes[0])',
        'c.yaml:11: probes[1].interval: needs a unit, e.g. 500ms or 2s (got "5")',
    ]


def test_help_explains_flags_signals_endpoints_and_examples(
    capsys: pytest.CaptureFixture[str],
) -> None:
    top = build_parser().format_help()
    for needle in ("SIGHUP", "SIGTERM", "/api/v1/probes", "/metrics", "/-/reload", "examples:"):
        assert needle in top, needle
    for command, needles in {
        "run": ("--log-level", "overrides global.log_level", "SIGHUP"),
        "once": ("config file whose probes to run once", "--json"),
    }.items():
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        for needle in needles:
            assert needle in text, (command, needle)


def test_readme_documents_every_tls_option() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in TlsConfig.model_fields:
        assert f"{name}" in readme, f"README does not mention tls.{name}"


def test_demo_table_says_which_figures_are_rolling_and_shows_reconnect_and_age() -> None:
    status = ProbeStatus("echo-local", "echo", "ws://x/", slo=(0.05,))
    for seconds in (0.001, 0.002, 0.2):
        status.recent.append(seconds)
    status.sessions_open, status.session_started = 1, time.time() - 30
    status.last_reconnect_s, status.sent, status.lost = 0.25, 10, 1
    out = io.StringIO()
    summary([status], out)
    groups, header, row = out.getvalue().strip().splitlines()
    assert f"latest {RECENT} replies" in groups and "since start" in groups
    assert header.split() == [
        "probe",
        "state",
        "age",
        "p50",
        "p99",
        "SLO",
        "in",
        "SLO",
        "sent",
        "lost",
        "reconn",
        "disconnects",
    ]
    assert row.split()[:3] == ["echo-local", "up", "30s"]
    assert "67%" in row and "250.0ms" in row
