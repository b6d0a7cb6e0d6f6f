"""The shipped Prometheus rules: generated, valid, unit-tested by promtool, and on the contract."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from probed import alert_rules, contract
from probed.alert_rules import SLOS, Windows, rule_groups
from probed.metrics import LATENCY_BUCKETS

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
RUNBOOK = ROOT / "docs" / "runbook.md"

# Windows of seconds, as the end-to-end test uses them: the same expressions must stay valid.
SHORT = Windows(
    evaluation="1s",
    breach="10s",
    breach_for="3s",
    down_for="3s",
    page_fast=("40s", "10s"),
    page_slow=("60s", "20s"),
    ticket_fast=("90s", "30s"),
    ticket_slow=("120s", "40s"),
    burn_for="2s",
    loss="10s",
    loss_for="3s",
    churn="30s",
    absent="60s",
    absent_for="5s",
    wer="30s",
    wer_baseline="60s",
    self_for="5s",
)
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not installed: run the README test command (tests/run.sh)")
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


def all_rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"]]


def series_names(expr: str) -> set[str]:
    """Metric and recording-rule names an expression reads (label names and values left out)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "", without_strings)
    without_groupings = re.sub(r"\b(without|by)\s*\([^)]*\)", "", without_matchers)
    return {
        name
        for name in _NAME.findall(without_groupings)
        if name.startswith(("probe_", "probed_", "process_", "probe:", "up"))
    }


def test_committed_files_are_generated() -> None:
    assert (ROOT / alert_rules.RULES_FILE).read_text() == alert_rules.rules_file(), (
        "regenerate: python -m probed.alert_rules --write"
    )
    assert (ROOT / alert_rules.PROMETHEUS_RULE_FILE).read_text() == alert_rules.prometheus_rule(), (
        "regenerate: python -m probed.alert_rules --write"
    )


def test_rules_read_only_contract_metrics() -> None:
    rules = all_rules(rule_groups())
    recorded = {rule["record"] for rule in rules if "record" in rule}
    read: set[str] = set()
    for rule in rules:
        read |= series_names(rule["expr"])
    unknown = {name for name in read - recorded - {"up"} if contract.family_of(name) is None}
    assert not unknown, f"rules read names outside the metric contract: {sorted(unknown)}"
    # Every recording rule is used by an alert or documented in the runbook.
    runbook = RUNBOOK.read_text()
    unused = {name for name in recorded if name not in read and name not in runbook}
    assert not unused, f"recording rules nobody reads: {sorted(unused)}"
    assert {"probe_message_rtt_seconds_bucket", "probe_stt_final_seconds_bucket", "up"} <= read


def test_slo_thresholds_are_bucket_boundaries() -> None:
    for slo in SLOS:
        assert slo.threshold in LATENCY_BUCKETS, slo
        assert contract.BY_NAME[slo.metric].type == "histogram"


def test_every_alert_is_labelled_and_has_a_runbook_section() -> None:
    rules = [rule for rule in all_rules(rule_groups()) if "alert" in rule]
    headings = {
        line.lstrip("#").strip().lower()
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("### ")
    }
    names = {rule["alert"] for rule in rules}
    for rule in rules:
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(alert_rules.RUNBOOK + "#")
        assert url.split("#", 1)[1] in headings, f"no runbook section for {rule['alert']}"
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert {name.lower() for name in names} == headings, "runbook sections without an alert"
    # One plain breach and one burn-rate alert (page and ticket tiers) per SLO.
    for slo in SLOS:
        tiers = {
            rule["labels"]["severity"]
            for rule in rules
            if rule["alert"] == f"{slo.alert}ErrorBudgetBurn"
        }
        assert tiers == {"page", "ticket"}
        assert f"{slo.alert}SloBreach" in names


def test_burn_rate_windows_follow_the_workbook() -> None:
    rule = next(
        r for r in all_rules(rule_groups()) if r.get("alert") == "MessageRttErrorBudgetBurn"
    )
    expr = rule["expr"]
    assert "probe:message_rtt_errors:ratio_rate1h > (14.4 * 0.01)" in expr
    assert "probe:message_rtt_errors:ratio_rate5m > (14.4 * 0.01)" in expr
    assert "probe:message_rtt_errors:ratio_rate6h > (6.0 * 0.01)" in expr
    assert "probe:message_rtt_errors:ratio_rate30m > (6.0 * 0.01)" in expr


@pytest.mark.e2e
@pytest.mark.parametrize("windows", [Windows(), SHORT], ids=["shipped", "short"])
def test_promtool_checks_the_rules(windows: Windows, tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(alert_rules.rules_file(windows))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(all_rules(rule_groups(windows)))} rules found" in result.stdout


@pytest.mark.e2e
def test_promtool_unit_tests_pass() -> None:
    tests = sorted((PROM / "tests").glob("*.yml"))
    assert tests
    result = promtool("test", "rules", *map(str, tests))
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert is exercised by at least one promtool unit test.
    text = "".join(t.read_text() for t in tests)
    tested = set(re.findall(r"alertname: (\w+)", text))
    assert set(alert_rules.alert_names()) <= tested


@pytest.mark.e2e
def test_promtool_checks_the_prometheus_example() -> None:
    result = promtool("check", "config", str(PROM / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.e2e
def test_alertmanager_example_is_valid_and_its_inhibitions_name_real_alerts() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail("amtool not installed: run tests/run.sh (prometheus-alertmanager)")
    path = PROM / "alertmanager.yml"
    result = subprocess.run(
        [amtool, "check-config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    names = set(alert_rules.alert_names())
    mentioned: set[str] = set()
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            m = re.fullmatch(r'alertname=~?"([^"]+)"', matcher)
            if m:
                mentioned |= set(m.group(1).split("|"))
    assert mentioned and mentioned <= names
    # Latency pages are held back while the daemon's self-health alerts fire.
    assert any(
        "ProbedEventLoopLag" in " ".join(r["source_matchers"])
        and 'slo=~".+"' in r["target_matchers"]
        for r in config["inhibit_rules"]
    )
