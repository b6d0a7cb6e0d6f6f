"""Prometheus recording and alerting rules for probed, generated from one source.

The windows are parameters: the shipped file (deploy/prometheus/probed.rules.yml) uses the SRE
workbook's windows, and the end-to-end test renders the very same expressions with windows of
seconds so that a real Prometheus fires and resolves them within a minute.

    python -m probed.alert_rules --write     # regenerate the committed files
    python -m probed.alert_rules             # print the rules file

Every SLO threshold is a histogram bucket boundary of the metric contract, so "fraction of events
under the threshold" is an exact bucket ratio and "percentile above the threshold" is exact too:
histogram_quantile interpolates inside a bucket, and a rank past the threshold's bucket always
lands above the threshold.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

RUNBOOK: Final = "https://github.com/probed/probed/blob/main/docs/runbook.md"
REPO_ROOT: Final = Path(__file__).resolve().parent.parent
RULES_FILE: Final = Path("deploy/prometheus/probed.rules.yml")
PROMETHEUS_RULE_FILE: Final = Path("deploy/kubernetes/prometheusrule.yaml")


@dataclass(frozen=True)
class Slo:
    key: str  # recording-rule and label name: message_rtt
    alert: str  # alert name stem: MessageRtt
    metric: str  # histogram family in the contract
    threshold: float  # seconds; a bucket boundary
    objective: float  # fraction of events that must be under the threshold
    what: str
    events: str  # plural, for descriptions
    # Events that never produced a latency but count against the SLO (lost, timed out), as a
    # PromQL selector of a counter; rated and added to the histogram's count.
    also_bad: str | None = None

    @property
    def budget(self) -> float:
        return round(1 - self.objective, 6)

    @property
    def quantile_name(self) -> str:
        # p99, p95, p99.9 -> p999
        return "p" + f"{self.objective * 100:g}".replace(".", "")


SLOS: Final = (
    Slo(
        "message_rtt",
        "MessageRtt",
        "probe_message_rtt_seconds",
        0.05,
        0.99,
        "message round trip",
        "round trips",
        also_bad="probe_messages_lost_total",
    ),
    Slo(
        "message_delivery",
        "MessageDelivery",
        "probe_message_delivery_seconds",
        0.05,
        0.99,
        "fan-out message delivery",
        "deliveries",
        also_bad="probe_messages_lost_total",  # per subscriber, like the deliveries
    ),
    Slo(
        "stt_final",
        "SttFinal",
        "probe_stt_final_seconds",
        0.5,
        0.95,
        "final transcript after the end of speech",
        "final transcripts",
        also_bad='probe_utterances_total{result="timeout"}',
    ),
    Slo(
        "voice_tool_call",
        "VoiceToolCall",
        "probe_voice_tool_call_seconds",
        1.0,
        0.95,
        "tool call after the end of speech",
        "tool calls",
    ),
)


@dataclass(frozen=True)
class Windows:
    """Every duration the rules use, in Prometheus syntax."""

    evaluation: str = "30s"
    breach: str = "5m"  # percentile window of the plain breach alerts
    breach_for: str = "5m"
    down_for: str = "2m"
    # (long, short) window pairs and their burn rates, from the SRE workbook, chapter 5.
    page_fast: tuple[str, str] = ("1h", "5m")
    page_slow: tuple[str, str] = ("6h", "30m")
    ticket_fast: tuple[str, str] = ("1d", "2h")
    ticket_slow: tuple[str, str] = ("3d", "6h")
    burn_for: str = "2m"
    loss: str = "10m"
    loss_for: str = "5m"
    churn: str = "30m"  # reconnect storms and flapping sessions
    absent: str = "1h"  # how long a vanished probe is remembered
    absent_for: str = "10m"
    wer: str = "1h"
    wer_baseline: str = "1d"  # compare with the same window this long ago
    self_for: str = "10m"  # daemon self-health

    def ratio_windows(self) -> list[str]:
        seen: dict[str, None] = {}
        for pair in (self.page_fast, self.page_slow, self.ticket_fast, self.ticket_slow):
            for window in pair:
                seen[window] = None
        return list(seen)


# Burn rates: the workbook's 2 % of a 30-day budget in 1 h, 5 % in 6 h, 10 % in 3 d and so on.
PAGE_FAST_BURN: Final = 14.4
PAGE_SLOW_BURN: Final = 6.0
TICKET_FAST_BURN: Final = 3.0
TICKET_SLOW_BURN: Final = 1.0
LOSS_RATIO: Final = 0.01
RECONNECT_STORM_ERRORS: Final = 10
FLAPPING_DISCONNECTS: Final = 5
WER_FLOOR: Final = 0.1
WER_REGRESSION_FACTOR: Final = 1.5
CERT_TICKET_DAYS: Final = 14
CERT_PAGE_DAYS: Final = 3
LOOP_LAG_P99: Final = 0.05  # the default loop_lag_threshold; a LOOP_LAG_BUCKETS boundary
TAINTED_PER_WINDOW: Final = 10
CRASHES_PER_WINDOW: Final = 3


def _le(value: float) -> str:
    # prometheus_client writes 1.0, Prometheus 3 normalises to 1 on ingestion in some paths:
    # match both spellings of an integral boundary.
    text = repr(float(value))
    return f'le="{text}"' if not text.endswith(".0") else f'le=~"{text[:-2]}|{text}"'


def _selector(metric: str, extra: str) -> str:
    if metric.endswith("}"):
        return f"{metric[:-1]},{extra}}}"
    return f"{metric}{{{extra}}}"


def ratio_record(slo: Slo, window: str) -> str:
    return f"probe:{slo.key}_errors:ratio_rate{window}"


def quantile_record(slo: Slo, window: str) -> str:
    return f"probe:{slo.metric.removeprefix('probe_')}:{slo.quantile_name}_rate{window}"


def error_ratio_expr(slo: Slo, window: str) -> str:
    """Fraction of events over the threshold (or never answered) in the window."""
    under = _selector(f"{slo.metric}_bucket", _le(slo.threshold))
    good = f"sum without (le) (rate({under}[{window}]))"
    total = f"sum without (le) (rate({slo.metric}_count[{window}]))"
    if slo.also_bad is not None:
        # `or ... * 0`: a counter whose series does not exist yet (no timeout so far) must not
        # make the whole ratio vanish, which would silence the SLO alerts.
        extra = f"sum without (result) (rate({slo.also_bad}[{window}]))"
        total = f"({total}\n  + ({extra}\n     or {total} * 0))"
    return f"1 - (\n  {good}\n/\n  {total}\n)"


def _runbook(base: str, alert: str) -> str:
    return f"{base}#{alert.lower()}"


class _Builder:
    def __init__(self, windows: Windows, runbook: str, job: str) -> None:
        self.w = windows
        self.runbook = runbook
        self.job = job

    def alert(
        self,
        name: str,
        expr: str,
        *,
        severity: str,
        summary: str,
        description: str,
        for_: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": name, "expr": expr}
        if for_ is not None:
            rule["for"] = for_
        rule["labels"] = {"severity": severity, **(labels or {})}
        rule["annotations"] = {
            "summary": summary,
            "description": description,
            "runbook_url": _runbook(self.runbook, name),
        }
        return rule

    # -- groups --------------------------------------------------------------------------------

    def recording(self) -> dict[str, Any]:
        rules: list[dict[str, Any]] = []
        for slo in SLOS:
            rules.append(
                {
                    "record": quantile_record(slo, self.w.breach),
                    "expr": f"histogram_quantile({slo.objective}, "
                    f"sum without () (rate({slo.metric}_bucket[{self.w.breach}])))",
                }
            )
            rules.extend(
                {"record": ratio_record(slo, window), "expr": error_ratio_expr(slo, window)}
                for window in self.w.ratio_windows()
            )
        wer = f"probe:stt_word_error_ratio:mean_rate{self.w.wer}"
        rules.append(
            {
                "record": wer,
                "expr": f"rate(probe_stt_word_error_ratio_sum[{self.w.wer}])\n"
                f"/\nrate(probe_stt_word_error_ratio_count[{self.w.wer}])",
            }
        )
        return {"name": "probed-recording", "interval": self.w.evaluation, "rules": rules}

    def slo_alerts(self) -> dict[str, Any]:
        w = self.w
        rules: list[dict[str, Any]] = []
        for slo in SLOS:
            labels = {"slo": slo.key}
            pct = f"{slo.objective * 100:g}"
            ms = f"{slo.threshold * 1000:g} ms"
            rules.append(
                self.alert(
                    f"{slo.alert}SloBreach",
                    f"{quantile_record(slo, w.breach)} > {slo.threshold}",
                    for_=w.breach_for,
                    severity="page",
                    labels=labels,
                    summary=f"{slo.what} p{pct} above {ms} on {{{{ $labels.probe }}}}",
                    description=f"p{pct} of the {slo.what} over {w.breach} is "
                    "{{ $value | humanizeDuration }} on probe {{ $labels.probe }} "
                    f"({{{{ $labels.instance }}}}); the SLO is {ms}.",
                )
            )
            for severity, pairs in (
                ("page", ((w.page_fast, PAGE_FAST_BURN), (w.page_slow, PAGE_SLOW_BURN))),
                ("ticket", ((w.ticket_fast, TICKET_FAST_BURN), (w.ticket_slow, TICKET_SLOW_BURN))),
            ):
                clauses = [
                    f"(\n  {ratio_record(slo, long)} > ({rate} * {slo.budget})\nand\n"
                    f"  {ratio_record(slo, short)} > ({rate} * {slo.budget})\n)"
                    for (long, short), rate in pairs
                ]
                windows_text = " and ".join(
                    f"{long}/{short} at {rate:g}x" for (long, short), rate in pairs
                )
                rules.append(
                    self.alert(
                        f"{slo.alert}ErrorBudgetBurn",
                        "\nor\n".join(clauses),
                        for_=w.burn_for,
                        severity=severity,
                        labels=labels,
                        summary=f"{slo.what} SLO ({pct}% under {ms}) is burning its error budget"
                        " on {{ $labels.probe }}",
                        description=f"Burn-rate windows {windows_text}: {{{{ $value | "
                        f"humanizePercentage }}}} of {slo.events} were over {ms}"
                        f"{'' if slo.also_bad is None else ' or never answered'} "
                        f"(budget {slo.budget * 100:g}%).",
                    )
                )
        return {"name": "probed-slo", "interval": w.evaluation, "rules": rules}

    def probe_alerts(self) -> dict[str, Any]:
        w = self.w
        wer = f"probe:stt_word_error_ratio:mean_rate{w.wer}"
        rules = [
            self.alert(
                "ProbeDown",
                "probe_success == 0",
                for_=w.down_for,
                severity="page",
                summary="probe {{ $labels.probe }} is failing",
                description="Probe {{ $labels.probe }} on {{ $labels.instance }} has had no "
                f"working session or no answer in time for {w.down_for}.",
            ),
            self.alert(
                "ProbeAbsent",
                f"count by (probe) (last_over_time(probe_info[{w.absent}]))\n"
                "unless\ncount by (probe) (probe_info)",
                for_=w.absent_for,
                severity="ticket",
                summary="probe {{ $labels.probe }} is no longer exported by any probed",
                description="Probe {{ $labels.probe }} was exported within the last "
                f"{w.absent} and is now exported by no scraped probed (config, shard or scrape).",
            ),
            self.alert(
                "ProbeHighMessageLoss",
                f"sum without () (rate(probe_messages_lost_total[{w.loss}]))\n/\n"
                f"sum without () (rate(probe_messages_sent_total[{w.loss}]))\n> {LOSS_RATIO}",
                for_=w.loss_for,
                severity="page",
                summary="probe {{ $labels.probe }} loses messages",
                description=f"{{{{ $value | humanizePercentage }}}} of messages sent in the last "
                f"{w.loss} were never answered (threshold {LOSS_RATIO * 100:g}%).",
            ),
            self.alert(
                "ProbeReconnectStorm",
                f"sum without (reason) (increase(probe_connect_errors_total[{w.churn}]))\n"
                f"> {RECONNECT_STORM_ERRORS}",
                severity="ticket",
                summary="probe {{ $labels.probe }} keeps failing to connect",
                description="{{ $value | humanize }} connection attempts failed in the last "
                f"{w.churn}.",
            ),
            self.alert(
                "ProbeSessionFlapping",
                "sum without (reason) (increase(probe_disconnects_total"
                f'{{reason!~"churn|shutdown"}}[{w.churn}]))\n> {FLAPPING_DISCONNECTS}',
                severity="ticket",
                summary="sessions of probe {{ $labels.probe }} keep dying",
                description="{{ $value | humanize }} sessions ended unplanned in the last "
                f"{w.churn}.",
            ),
            self.alert(
                "ProbeWerRegression",
                f"{wer} > {WER_FLOOR}\nand\n"
                f"{wer} > {WER_REGRESSION_FACTOR} * ({wer} offset {w.wer_baseline})",
                for_=w.self_for,
                severity="ticket",
                summary="speech recognition got worse on {{ $labels.probe }}",
                description=f"Mean word error ratio over {w.wer} is {{{{ $value | "
                f"humanizePercentage }}}}, over {WER_REGRESSION_FACTOR}x what it was "
                f"{w.wer_baseline} ago.",
            ),
        ]
        for name, days, severity in (
            ("ProbeTlsCertExpiring", CERT_TICKET_DAYS, "ticket"),
            ("ProbeTlsCertExpiryCritical", CERT_PAGE_DAYS, "page"),
        ):
            rules.append(
                self.alert(
                    name,
                    f"probe_tls_cert_expiry_timestamp_seconds - time() < {days} * 86400",
                    for_=w.down_for,
                    severity=severity,
                    summary="TLS certificate of {{ $labels.probe }}'s target expires soon",
                    description="The earliest expiry in the chain is in "
                    f"{{{{ $value | humanizeDuration }}}} (threshold {days} days).",
                )
            )
        return {"name": "probed-probes", "interval": w.evaluation, "rules": rules}

    def self_alerts(self) -> dict[str, Any]:
        w = self.w
        up = f'up{{job="{self.job}"}}'
        rules = [
            self.alert(
                "ProbedEventLoopLag",
                "histogram_quantile(0.99, sum without () "
                f"(rate(probed_event_loop_lag_seconds_bucket[{w.breach}])))\n> {LOOP_LAG_P99}",
                for_=w.breach_for,
                severity="ticket",
                labels={"component": "daemon"},
                summary="probed on {{ $labels.instance }} is starved of CPU",
                description="p99 event-loop lag is {{ $value | humanizeDuration }}; "
                "latency measurements are unreliable and withheld (tainted).",
            ),
            self.alert(
                "ProbedMeasurementsTainted",
                f"sum without (probe) (increase(probe_measurements_tainted_total[{w.breach}]))\n"
                f"> {TAINTED_PER_WINDOW}",
                for_=w.breach_for,
                severity="ticket",
                labels={"component": "daemon"},
                summary="probed on {{ $labels.instance }} withholds measurements",
                description="{{ $value | humanize }} measurements in the last "
                f"{w.breach} were taken while the event loop lagged and were left out.",
            ),
            self.alert(
                "ProbedConfigReloadFailed",
                "probed_config_last_reload_successful == 0",
                for_=w.down_for,
                severity="ticket",
                labels={"component": "daemon"},
                summary="probed on {{ $labels.instance }} rejected its new config",
                description="The latest reload failed; the previous config keeps running. "
                "`probed check -c FILE` names the errors.",
            ),
            self.alert(
                "ProbedProbeCrashLooping",
                f"increase(probed_probe_restarts_total[{w.churn}]) > {CRASHES_PER_WINDOW}",
                severity="ticket",
                labels={"component": "daemon"},
                summary="probe {{ $labels.probe }} keeps crashing inside probed",
                description="The probe task crashed {{ $value | humanize }} times in the last "
                f"{w.churn}; this is a probed bug, not an outage.",
            ),
            self.alert(
                "ProbedWorkerCrashLooping",
                f"increase(probed_worker_restarts_total[{w.churn}]) > {CRASHES_PER_WINDOW}",
                severity="ticket",
                labels={"component": "daemon"},
                summary="probed worker {{ $labels.worker }} on {{ $labels.instance }} keeps dying",
                description="The worker process exited {{ $value | humanize }} times in the last "
                f"{w.churn}; its probes are blind while it restarts.",
            ),
            self.alert(
                "ProbedScrapeFailed",
                f"{up} == 0",
                for_=w.down_for,
                severity="page",
                labels={"component": "daemon"},
                summary="Prometheus cannot scrape probed on {{ $labels.instance }}",
                description="Every probe on this instance is blind; SLO alerts cannot fire.",
            ),
            self.alert(
                "ProbedAbsent",
                f"absent({up})",
                for_=w.absent_for,
                severity="page",
                labels={"component": "daemon"},
                summary=f'no probed target (job="{self.job}") is known to Prometheus',
                description="Service discovery finds no probed at all: nothing is being probed.",
            ),
        ]
        return {"name": "probed-self", "interval": w.evaluation, "rules": rules}


def rule_groups(
    windows: Windows = Windows(), *, runbook: str = RUNBOOK, job: str = "probed"
) -> list[dict[str, Any]]:
    b = _Builder(windows, runbook, job)
    return [b.recording(), b.slo_alerts(), b.probe_alerts(), b.self_alerts()]


def alert_names() -> list[str]:
    return [rule["alert"] for group in rule_groups() for rule in group["rules"] if "alert" in rule]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)

_HEADER: Final = (
    "# Generated by `python -m probed.alert_rules --write` from probed/alert_rules.py;"
    " do not edit.\n"
)


def dump(document: object) -> str:
    return _HEADER + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100)


def rules_file(windows: Windows = Windows(), **kwargs: str) -> str:
    return dump({"groups": rule_groups(windows, **kwargs)})


def prometheus_rule(windows: Windows = Windows(), **kwargs: str) -> str:
    """The same groups as a Prometheus Operator PrometheusRule."""
    return dump(
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {
                "name": "probed",
                "labels": {"app.kubernetes.io/name": "probed", "role": "alert-rules"},
            },
            "spec": {"groups": rule_groups(windows, **kwargs)},
        }
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m probed.alert_rules", description=__doc__)
    parser.add_argument("--write", action="store_true", help="regenerate the committed files")
    parser.add_argument("--runbook", default=RUNBOOK, help="runbook URL (anchors are added)")
    parser.add_argument("--job", default="probed", help="the scrape job's name")
    args = parser.parse_args(argv)
    kwargs = {"runbook": args.runbook, "job": args.job}
    if not args.write:
        sys.stdout.write(rules_file(**kwargs))
        return 0
    (REPO_ROOT / RULES_FILE).write_text(rules_file(**kwargs))
    (REPO_ROOT / PROMETHEUS_RULE_FILE).write_text(prometheus_rule(**kwargs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
