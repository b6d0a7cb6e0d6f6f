"""The Grafana dashboard for probed, generated so that every query is checked against the contract.

    python -m probed.dashboard --write     # regenerate deploy/grafana/probed.json

One dashboard, templated by location and probe: latency percentiles against the SLO line, the
latency heatmap, loss, reconnects by reason, speech and voice latencies, WER, WebRTC, TLS expiry
and the daemon's own health.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from probed.alert_rules import SLOS, Slo

DASHBOARD_FILE: Final = Path("deploy/grafana/probed.json")
REPO_ROOT: Final = Path(__file__).resolve().parent.parent

SEL: Final = 'probe=~"$probe", location=~"$location"'
SELF: Final = 'location=~"$location"'  # daemon series carry no probe label
RATE: Final = "$__rate_interval"
DS: Final = {"type": "prometheus", "uid": "${datasource}"}
WIDTH: Final = 24


def _q(expr: str, legend: str, ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, **extra}


def _quantiles(metric: str, qs: Sequence[float] = (0.5, 0.9, 0.99)) -> list[dict[str, Any]]:
    return [
        _q(
            f"histogram_quantile({q}, sum by (le, probe) (rate({metric}_bucket{{{SEL}}}[{RATE}])))",
            f"p{q * 100:g} {{{{probe}}}}",
            chr(ord("A") + i),
        )
        for i, q in enumerate(qs)
    ]


class _Layout:
    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self._row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": self.y},
                "id": len(self.panels) + 1,
                "panels": [],
            }
        )
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self._row_height
            self.x = 0
            self._row_height = 0

    def panel(
        self,
        title: str,
        targets: list[dict[str, Any]],
        *,
        kind: str = "timeseries",
        unit: str = "s",
        width: int = 12,
        height: int = 8,
        slo: float | None = None,
        description: str = "",
        options: dict[str, Any] | None = None,
    ) -> None:
        if self.x + width > WIDTH:
            self._newline()
        defaults: dict[str, Any] = {"unit": unit}
        if slo is not None:
            # The SLO as a red dashed line across the graph.
            defaults["thresholds"] = {
                "mode": "absolute",
                "steps": [{"color": "green", "value": None}, {"color": "red", "value": slo}],
            }
            defaults["custom"] = {"thresholdsStyle": {"mode": "dashed"}}
        self.panels.append(
            {
                "type": kind,
                "title": title,
                "description": description,
                "datasource": DS,
                "gridPos": {"h": height, "w": width, "x": self.x, "y": self.y},
                "id": len(self.panels) + 1,
                "targets": targets,
                "fieldConfig": {"defaults": defaults, "overrides": []},
                "options": options or {},
            }
        )
        self.x += width
        self._row_height = max(self._row_height, height)


def _slo_panel(layout: _Layout, slo: Slo, title: str) -> None:
    layout.panel(
        f"{title}: percentiles vs SLO ({slo.threshold * 1000:g} ms)",
        _quantiles(slo.metric),
        slo=slo.threshold,
        description=f"{slo.what}; the dashed line is the SLO threshold, a histogram bucket "
        "boundary.",
    )


def _within_slo(slo: Slo) -> dict[str, Any]:
    le = f'le="{slo.threshold!r}"' if slo.threshold != 1.0 else 'le=~"1|1.0"'
    return _q(
        f"sum by (probe) (rate({slo.metric}_bucket{{{SEL}, {le}}}[{RATE}]))\n/\n"
        f"sum by (probe) (rate({slo.metric}_count{{{SEL}}}[{RATE}]))",
        "{{probe}}",
    )


def _voice_panels(lay: _Layout) -> None:
    """The voice agent beyond its SLO panels: as heard, barge-in, the provider's view."""
    lay.panel(
        "Voice turn (first sound, playback clock)",
        _quantiles("probe_voice_turn_seconds", (0.5, 0.95)),
        width=8,
        description="End of speech to the first non-silent answer audio as the user hears it.",
    )
    lay.panel(
        "Voice barge-in (interruption to yield)",
        _quantiles("probe_voice_bargein_seconds", (0.5, 0.95)),
        width=8,
    )
    lay.panel(
        "Voice: where the time went (provider's view)",
        [
            *_quantiles("probe_voice_provider_eos_seconds", (0.5,)),
            _q(
                f"sum by (probe) (rate(probe_voice_provider_endpoint_seconds_sum{{{SEL}}}[{RATE}]))"
                f"\n/\nsum by (probe) "
                f"(rate(probe_voice_provider_endpoint_seconds_count{{{SEL}}}[{RATE}]))",
                "endpointing (mean) {{probe}}",
                "B",
            ),
        ],
        width=8,
        description="The provider's end-of-speech event after the fixture's end of speech, and "
        "its own endpointing offset on its audio clock (OpenAI audio_end_ms).",
    )
    lay.panel(
        "Voice turns, tool calls, barge-ins by result",
        [
            _q(
                f"sum by (result) (increase(probe_voice_turns_total{{{SEL}}}[{RATE}]))",
                "turn {{result}}",
            ),
            _q(
                f"sum by (result) (increase(probe_voice_tool_calls_total{{{SEL}}}[{RATE}]))",
                "tool call {{result}}",
                "B",
            ),
            _q(
                f"sum by (result) (increase(probe_voice_bargeins_total{{{SEL}}}[{RATE}]))",
                "barge-in {{result}}",
                "C",
            ),
            _q(
                f"sum by (result) (increase(probe_voice_resumptions_total{{{SEL}}}[{RATE}]))",
                "after go-away {{result}}",
                "D",
            ),
        ],
        unit="short",
        width=12,
    )
    lay.panel(
        "Voice go-away to the next session ready",
        _quantiles("probe_voice_resume_seconds", (0.5, 0.95)),
        width=12,
        description="Includes the turn in flight, measured to its end before the session "
        "drains; resumed with a handle, fresh or refused: see the panel beside.",
    )


def build() -> dict[str, Any]:
    rtt, delivery, stt, tool = SLOS
    lay = _Layout()

    lay.row("Overview")
    lay.panel(
        "Probe success",
        [_q(f"min by (probe) (probe_success{{{SEL}}})", "{{probe}}")],
        kind="state-timeline",
        unit="bool_on_off",
        width=12,
        height=6,
    )
    lay.panel(
        "Sessions open",
        [_q(f"sum by (probe) (probe_connections_open{{{SEL}}})", "{{probe}}")],
        unit="short",
        width=6,
        height=6,
    )
    lay.panel(
        "TLS certificate expires in",
        [
            _q(
                f"min by (probe) (probe_tls_cert_expiry_timestamp_seconds{{{SEL}}}) - time()",
                "{{probe}}",
            )
        ],
        kind="stat",
        width=6,
        height=6,
    )

    lay.row("Messages")
    _slo_panel(lay, rtt, "Echo round trip")
    lay.panel(
        "Echo round trip heatmap",
        [
            _q(
                f"sum by (le) (increase(probe_message_rtt_seconds_bucket{{{SEL}}}[{RATE}]))",
                "{{le}}",
                format="heatmap",
            )
        ],
        kind="heatmap",
        options={"calculate": False, "yAxis": {"unit": "s"}},
    )
    lay.panel(
        "Fraction within SLO (round trip)",
        [_within_slo(rtt)],
        unit="percentunit",
        slo=rtt.objective,
        width=8,
    )
    lay.panel(
        "Loss, duplicates, reordering",
        [
            _q(
                f"sum by (probe) (rate(probe_messages_lost_total{{{SEL}}}[{RATE}]))\n/\n"
                f"sum by (probe) (rate(probe_messages_sent_total{{{SEL}}}[{RATE}]))",
                "lost {{probe}}",
            ),
            _q(
                f"sum by (probe) (rate(probe_messages_duplicated_total{{{SEL}}}[{RATE}]))\n/\n"
                f"sum by (probe) (rate(probe_messages_received_total{{{SEL}}}[{RATE}]))",
                "duplicated {{probe}}",
                "B",
            ),
            _q(
                f"sum by (probe) (rate(probe_messages_reordered_total{{{SEL}}}[{RATE}]))\n/\n"
                f"sum by (probe) (rate(probe_messages_received_total{{{SEL}}}[{RATE}]))",
                "reordered {{probe}}",
                "C",
            ),
        ],
        unit="percentunit",
        width=8,
    )
    lay.panel(
        "Unmatched and ignored inbound messages",
        [
            _q(
                f"sum by (reason) (rate(probe_messages_unmatched_total{{{SEL}}}[{RATE}]))",
                "unmatched {{reason}}",
            ),
            _q(
                f"sum by (reason) (rate(probe_messages_ignored_total{{{SEL}}}[{RATE}]))",
                "ignored {{reason}}",
                "B",
            ),
        ],
        unit="reqps",
        width=8,
    )
    _slo_panel(lay, delivery, "Fan-out delivery")
    lay.panel(
        "Fan-out complete and HTTP duration (p99)",
        [
            _q(
                "histogram_quantile(0.99, sum by (le, probe) "
                f"(rate(probe_fanout_complete_seconds_bucket{{{SEL}}}[{RATE}])))",
                "fan-out complete {{probe}}",
            ),
            _q(
                "histogram_quantile(0.99, sum by (le, probe) "
                f"(rate(probe_http_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                "http {{probe}}",
                "B",
            ),
        ],
    )

    lay.panel(
        "Fan-out messages published",
        [
            _q(
                f"sum by (probe) (rate(probe_fanout_published_total{{{SEL}}}[{RATE}]))",
                "{{probe}}",
            )
        ],
        unit="reqps",
    )
    lay.panel(
        "HTTP requests by result",
        [
            _q(
                f"sum by (result) (increase(probe_http_requests_total{{{SEL}}}[{RATE}]))",
                "{{result}}",
            )
        ],
        unit="short",
    )

    lay.row("Connections")
    lay.panel(
        "Disconnects by reason",
        [
            _q(
                f"sum by (reason) (increase(probe_disconnects_total{{{SEL}}}[{RATE}]))",
                "{{reason}}",
            )
        ],
        unit="short",
        width=8,
    )
    lay.panel(
        "Connect errors by reason",
        [
            _q(
                f"sum by (reason) (increase(probe_connect_errors_total{{{SEL}}}[{RATE}]))",
                "{{reason}}",
            )
        ],
        unit="short",
        width=8,
    )
    lay.panel(
        "Close codes received",
        [_q(f"sum by (code) (increase(probe_close_codes_total{{{SEL}}}[{RATE}]))", "{{code}}")],
        unit="short",
        width=8,
    )
    lay.panel("Reconnect duration", _quantiles("probe_reconnect_duration_seconds", (0.5, 0.99)))
    lay.panel("Connect duration", _quantiles("probe_connect_duration_seconds", (0.5, 0.99)))
    lay.panel(
        "Latest connect by phase",
        [
            _q(
                f"max by (probe, phase) (probe_connect_phase_seconds{{{SEL}}})",
                "{{probe}} {{phase}}",
            )
        ],
        kind="barchart",
        width=12,
    )
    lay.panel(
        "Session age",
        [
            _q(
                f"time() - max by (probe) (probe_connection_start_timestamp_seconds{{{SEL}}})",
                "{{probe}}",
            )
        ],
        width=12,
    )

    lay.row("Speech and voice")
    _slo_panel(lay, stt, "STT final")
    lay.panel(
        "STT first partial",
        _quantiles("probe_stt_first_partial_seconds", (0.5, 0.95)),
    )
    _slo_panel(lay, tool, "Voice tool call")
    lay.panel("Voice first response audio", _quantiles("probe_voice_response_seconds", (0.5, 0.95)))
    lay.panel(
        "Word error ratio (mean)",
        [
            _q(
                f"sum by (probe) (rate(probe_stt_word_error_ratio_sum{{{SEL}}}[{RATE}]))\n/\n"
                f"sum by (probe) (rate(probe_stt_word_error_ratio_count{{{SEL}}}[{RATE}]))",
                "{{probe}}",
            )
        ],
        unit="percentunit",
        width=8,
    )
    lay.panel(
        "Utterances by result",
        [
            _q(
                f"sum by (result) (increase(probe_utterances_total{{{SEL}}}[{RATE}]))",
                "{{result}}",
            )
        ],
        unit="short",
        width=8,
    )
    lay.panel(
        "Audio send lag (p99)",
        _quantiles("probe_audio_send_lag_seconds", (0.99,)),
        width=8,
        description="How late audio chunks left against their schedule: a starved probe.",
    )
    _voice_panels(lay)

    lay.row("WebRTC")
    lay.panel(
        "Setup (offer to connected)", _quantiles("probe_webrtc_setup_seconds", (0.5, 0.95)), width=8
    )
    lay.panel("RTCP round trip", _quantiles("probe_webrtc_rtt_seconds", (0.5, 0.95)), width=8)
    lay.panel(
        "Audio round trip (known signal)",
        _quantiles("probe_webrtc_audio_roundtrip_seconds", (0.5, 0.95)),
        width=8,
        slo=0.3,
        description="Known signal out to its echo's packets back, without the probe's own "
        "receive buffering; the dashed line is the default SLO (300 ms).",
    )
    lay.panel(
        "Client buffering (p50)",
        _quantiles("probe_webrtc_client_buffering_seconds", (0.5,)),
        width=6,
        description="What a plain aiortc client's jitter buffer and decoder would add on top: "
        "the probe's own share, kept out of the round trip.",
    )
    lay.panel(
        "Echo results",
        [
            _q(
                f"sum by (result) (increase(probe_webrtc_echoes_total{{{SEL}}}[{RATE}]))",
                "{{result}}",
            )
        ],
        unit="short",
        width=6,
    )
    lay.panel(
        "Jitter",
        [
            _q(
                f"max by (probe, direction) (probe_webrtc_jitter_seconds{{{SEL}}})",
                "{{probe}} {{direction}}",
            )
        ],
        width=6,
    )
    lay.panel(
        "Packets lost",
        [
            _q(
                "sum by (probe, direction) "
                f"(rate(probe_webrtc_packets_lost_total{{{SEL}}}[{RATE}]))",
                "{{probe}} {{direction}}",
            )
        ],
        unit="pps",
        width=6,
    )

    lay.row("probed itself")
    lay.panel(
        "Event loop lag (p99)",
        [
            _q(
                # One line per worker process under --workers N: one starved worker shows.
                "histogram_quantile(0.99, sum by (le, instance, worker) "
                f"(rate(probed_event_loop_lag_seconds_bucket{{{SELF}}}[{RATE}])))",
                "{{instance}} {{worker}}",
            )
        ],
        slo=0.005,
        width=8,
        description="Above the loop_lag_threshold (5 ms by default) measurements are tainted.",
    )
    lay.panel(
        "Tainted measurements",
        [
            _q(
                f"sum by (probe) (rate(probe_measurements_tainted_total{{{SEL}}}[{RATE}]))",
                "{{probe}}",
            )
        ],
        unit="reqps",
        width=8,
    )
    lay.panel(
        "Probe crashes and config reloads",
        [
            _q(
                f"sum by (probe) (increase(probed_probe_restarts_total{{{SELF}}}[{RATE}]))",
                "crashes {{probe}}",
            ),
            _q(
                f"min by (instance) (probed_config_last_reload_successful{{{SELF}}})",
                "last reload ok {{instance}}",
                "B",
            ),
            _q(
                f"time() - max by (instance) "
                f"(probed_config_last_reload_success_timestamp_seconds{{{SELF}}})",
                "since last good config {{instance}}",
                "C",
            ),
            _q(
                f"sum by (instance, worker) "
                f"(increase(probed_worker_restarts_total{{{SELF}}}[{RATE}]))",
                "worker restarts {{instance}} {{worker}}",
                "D",
            ),
            _q(
                f"min by (instance) (probed_worker_up{{{SELF}}})",
                "all workers up {{instance}}",
                "E",
            ),
        ],
        unit="short",
        width=8,
    )
    lay.panel(
        "CPU",
        [
            _q(
                f'rate(process_cpu_seconds_total{{job="probed", {SELF}}}[{RATE}])',
                "{{instance}} {{worker}}",
            )
        ],
        unit="percentunit",
        width=6,
    )
    lay.panel(
        "Resident memory",
        [
            _q(f'process_resident_memory_bytes{{job="probed", {SELF}}}', "resident {{instance}}"),
            _q(
                f'process_virtual_memory_bytes{{job="probed", {SELF}}}',
                "virtual {{instance}}",
                "B",
            ),
        ],
        unit="bytes",
        width=6,
    )
    lay.panel(
        "Open file descriptors",
        [
            _q(
                f'process_open_fds{{job="probed", {SELF}}}\n/\n'
                f'process_max_fds{{job="probed", {SELF}}}',
                "{{instance}}",
            )
        ],
        unit="percentunit",
        width=6,
    )
    lay.panel(
        "Uptime and version",
        [
            _q(
                f'time() - process_start_time_seconds{{job="probed", {SELF}}}',
                "{{instance}}",
            ),
            _q(
                f"count by (version, event_loop) (probed_build_info{{{SELF}}})",
                "{{version}} on {{event_loop}}",
                "B",
            ),
        ],
        kind="stat",
        width=6,
    )

    def variable(name: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": name,
            "type": "query",
            "datasource": DS,
            "query": {"query": query, "refId": name},
            "definition": query,
            "refresh": 2,
            "multi": True,
            "includeAll": True,
            "allValue": ".*",
            "current": {"text": "All", "value": "$__all"},
            "sort": 1,
        }

    return {
        "title": "probed",
        "uid": "probed",
        "description": "Realtime probes: message latency against the SLO, loss, reconnects, "
        "speech and voice latency, WebRTC, and probed's own health.",
        "tags": ["probed", "slo", "websocket"],
        "editable": True,
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                },
                variable("location", "label_values(probe_info, location)"),
                variable("probe", 'label_values(probe_info{location=~"$location"}, probe)'),
            ]
        },
        "annotations": {"list": []},
        "links": [],
        "panels": lay.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m probed.dashboard", description=__doc__)
    parser.add_argument("--write", action="store_true", help=f"write {DASHBOARD_FILE}")
    args = parser.parse_args(argv)
    if args.write:
        (REPO_ROOT / DASHBOARD_FILE).write_text(render())
    else:
        print(render(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
