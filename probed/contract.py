"""The metric contract as data: every family name, its type and its labels (besides `probe`).

Alert rules, recording rules and the Grafana dashboard are written against these names, some for
probe kinds that are still being built (speech, voice, WebRTC). Tests check that the rules and the
dashboard query only names listed here, and that what the daemon exports matches this list (the
golden exposition files), so the three cannot drift apart silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Family:
    name: str  # as queried: counters end in _total
    type: Kind
    labels: frozenset[str]  # besides `probe` on probe_* families, and the global static labels
    per_probe: bool


def _f(name: str, kind: Kind, *labels: str) -> Family:
    return Family(name, kind, frozenset(labels), per_probe=name.startswith("probe_"))


FAMILIES: Final[tuple[Family, ...]] = (
    # The daemon itself.
    _f("probed_build_info", "gauge", "version", "python_version", "event_loop"),
    _f("probed_config_last_reload_successful", "gauge"),
    _f("probed_config_last_reload_success_timestamp_seconds", "gauge"),
    _f("probed_event_loop_lag_seconds", "histogram"),
    _f("probed_probe_restarts_total", "counter", "probe"),
    # Under --workers N: one series per worker process, and the process_* and loop-lag families
    # of each worker carry a `worker` label beside the parent's own (which has none).
    _f("probed_worker_up", "gauge", "worker"),
    _f("probed_worker_restarts_total", "counter", "worker"),
    _f("process_cpu_seconds_total", "counter"),
    _f("process_max_fds", "gauge"),
    _f("process_open_fds", "gauge"),
    _f("process_resident_memory_bytes", "gauge"),
    _f("process_start_time_seconds", "gauge"),
    _f("process_virtual_memory_bytes", "gauge"),
    # Every probe.
    _f("probe_info", "gauge", "kind", "target", "adapter"),
    _f("probe_success", "gauge"),
    _f("probe_connections_open", "gauge"),
    _f("probe_connect_duration_seconds", "histogram"),
    _f("probe_connect_phase_seconds", "gauge", "phase"),
    _f("probe_connect_errors_total", "counter", "reason"),
    _f("probe_disconnects_total", "counter", "reason"),
    _f("probe_close_codes_total", "counter", "code"),
    _f("probe_reconnect_duration_seconds", "histogram"),
    _f("probe_connection_start_timestamp_seconds", "gauge"),
    _f("probe_tls_cert_expiry_timestamp_seconds", "gauge"),
    _f("probe_measurements_tainted_total", "counter"),
    # Messages: echo, fan-out, HTTP.
    _f("probe_message_rtt_seconds", "histogram"),
    _f("probe_message_delivery_seconds", "histogram"),
    _f("probe_fanout_complete_seconds", "histogram"),
    _f("probe_fanout_published_total", "counter"),
    _f("probe_http_duration_seconds", "histogram"),
    _f("probe_http_requests_total", "counter", "result"),
    _f("probe_messages_sent_total", "counter"),
    _f("probe_messages_received_total", "counter"),
    _f("probe_messages_lost_total", "counter"),
    _f("probe_messages_duplicated_total", "counter"),
    _f("probe_messages_reordered_total", "counter"),
    _f("probe_messages_unmatched_total", "counter", "reason"),
    _f("probe_messages_ignored_total", "counter", "reason"),
    # Speech and voice agents.
    _f("probe_stt_first_partial_seconds", "histogram"),
    _f("probe_stt_final_seconds", "histogram"),
    _f("probe_stt_word_error_ratio", "histogram"),
    _f("probe_voice_response_seconds", "histogram"),
    _f("probe_voice_tool_call_seconds", "histogram"),
    _f("probe_voice_turn_seconds", "histogram"),
    _f("probe_voice_provider_eos_seconds", "histogram"),
    _f("probe_voice_provider_endpoint_seconds", "histogram"),
    _f("probe_voice_bargein_seconds", "histogram"),
    _f("probe_voice_resume_seconds", "histogram"),
    _f("probe_voice_turns_total", "counter", "result"),
    _f("probe_voice_tool_calls_total", "counter", "result"),
    _f("probe_voice_bargeins_total", "counter", "result"),
    _f("probe_voice_resumptions_total", "counter", "result"),
    _f("probe_utterances_total", "counter", "result"),
    _f("probe_audio_send_lag_seconds", "histogram"),
    # WebRTC.
    _f("probe_webrtc_setup_seconds", "histogram"),
    _f("probe_webrtc_rtt_seconds", "histogram"),
    # direction: inbound (the far end's audio as we receive it) or outbound (ours, as the far
    # end reports it over RTCP).
    _f("probe_webrtc_jitter_seconds", "gauge", "direction"),
    _f("probe_webrtc_packets_lost_total", "counter", "direction"),
    _f("probe_webrtc_audio_roundtrip_seconds", "histogram"),
    _f("probe_webrtc_client_buffering_seconds", "histogram"),
    _f("probe_webrtc_echoes_total", "counter", "result"),
)
BY_NAME: Final = {f.name: f for f in FAMILIES}
# Families that describe one process: under --workers N each worker's series carry a `worker`
# label (its index) beside the parent's own, which carry none.
PER_WORKER: Final = frozenset(
    {
        "probed_event_loop_lag_seconds",
        "process_cpu_seconds_total",
        "process_max_fds",
        "process_open_fds",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_virtual_memory_bytes",
    }
)

_HISTOGRAM_SERIES: Final = ("_bucket", "_count", "_sum")


def family_of(series: str) -> Family | None:
    """The family a series name belongs to (`x_bucket` -> histogram `x`), or None."""
    if series in BY_NAME:
        return BY_NAME[series]
    for suffix in _HISTOGRAM_SERIES:
        base = series.removesuffix(suffix)
        if base != series and base in BY_NAME and BY_NAME[base].type == "histogram":
            return BY_NAME[base]
    return None
