"""The speech kind through the daemon, against the STT emulators (fast mode: endpointing only)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from probed import kinds, logs
from probed.config import ProbeConfig
from probed.targets.stt import SttFaults, SttTarget
from tests.conftest import RunningDaemon, bound, config, parse_exposition, wait_until
from tests.test_exposition import render

StartDaemon = Callable[..., Awaitable[RunningDaemon]]


def speech_yaml(
    name: str, adapter: str, url: str, extra: str = "", final_timeout: str = "3s"
) -> str:
    return f"""
  - name: {name}
    kind: speech
    adapter: {adapter}
    url: {url}
    fixtures: [run_tests, stop_music]
    interval: 2s
    end_of_speech: flush
    final_timeout: {final_timeout}
    start_stagger: 10ms
{extra}"""


async def test_final_latency_tracks_each_emulators_delay(start_daemon: StartDaemon) -> None:
    delay = 0.2
    async with (
        SttTarget("deepgram", fast=True, delay=delay) as dg,
        SttTarget("assemblyai", fast=True, delay=delay) as aai,
        SttTarget("generic", fast=True, delay=delay) as gen,
    ):
        # What is tested is that latency tracks each emulator's delay; the taint rule has tests of
        # its own, and at its 5 ms default on a busy machine it withholds nearly every final.
        text = "global:\n  loop_lag_threshold: 100ms\nprobes:" + "".join(
            speech_yaml(n, n, t.url) for n, t in (("deepgram", dg), ("assemblyai", aai))
        )
        text += speech_yaml("generic", "generic", gen.url)
        d = await start_daemon(config(text))
        names = ("deepgram", "assemblyai", "generic")

        def three_each() -> bool:
            # And a final latency kept (not withheld as tainted) for each.
            return all(
                d.count("probe_utterances_total", probe=n, result="ok") >= 3
                and d.count("probe_stt_final_seconds_count", probe=n) >= 1
                for n in names
            )

        await wait_until(three_each, within=30)
        for name in names:
            count = d.count("probe_stt_final_seconds_count", probe=name)
            mean = d.count("probe_stt_final_seconds_sum", probe=name) / count
            # The emulator's added processing delay plus a small base (flush mode: no VAD wait).
            assert delay <= mean < delay + bound(0.15), (name, mean)
            assert d.count("probe_stt_word_error_ratio_sum", probe=name) == 0  # fast mode
            assert d.count("probe_audio_send_lag_seconds_count", probe=name) > 0
            assert d.value("probe_success", probe=name) == 1
            info = d.value("probe_info", probe=name, adapter=f"{name}/flush")
            assert info == 1
        # Held sessions: one each, never reconnected.
        assert d.count("probe_connect_duration_seconds_count", probe="deepgram") == 1


async def test_close_codes_and_timeouts_are_counted_and_the_probe_goes_on(
    start_daemon: StartDaemon,
) -> None:
    async with (
        SttTarget("deepgram", fast=True, faults=SttFaults(close_code=1011)) as closing,
        SttTarget("assemblyai", fast=True, faults=SttFaults(never_finalise=True)) as mute,
    ):
        extra = "    connection: {reconnect: {initial: 100ms, max: 200ms}}\n"
        text = "probes:" + speech_yaml("closing", "deepgram", closing.url, extra)
        text += speech_yaml("mute", "assemblyai", mute.url, final_timeout="500ms")
        d = await start_daemon(config(text))
        await wait_until(
            lambda: d.count("probe_close_codes_total", probe="closing", code="1011") >= 2,
            within=30,
        )
        assert d.count("probe_disconnects_total", probe="closing", reason="server_close") >= 2
        await wait_until(
            lambda: d.count("probe_utterances_total", probe="mute", result="timeout") >= 2,
            within=30,
        )
        assert d.value("probe_success", probe="mute") == 0
        assert d.count("probed_probe_restarts_total", probe="closing") == 0


async def test_once_streams_one_utterance() -> None:
    async with SttTarget("deepgram", fast=True, delay=0.05) as dg:
        cfg: ProbeConfig = config("probes:" + speech_yaml("once", "deepgram", dg.url)).probes[0]
        probe = kinds.build(cfg, kinds.new_metrics(cfg), logs.get(probe="once"))
        assert await probe.once()


def test_bad_fixtures_and_options_are_check_errors(tmp_path: Path) -> None:
    with pytest.raises(Exception, match=r"fixtures.*no clip 'nope'"):
        config("probes:" + speech_yaml("x", "deepgram", "ws://h/").replace("run_tests", "nope"))
    with pytest.raises(Exception, match="not valid for the deepgram adapter"):
        config("probes:" + speech_yaml("x", "deepgram", "ws://h/", "    options: {modle: x}\n"))
    (tmp_path / "manifest.json").write_text(
        '{"sample_rate": 16000, "clips": [{"id": "c", "file": "c.wav", "transcript": "hi"}]}'
    )
    (tmp_path / "c.wav").write_bytes(b"RIFF not really a wav file")
    with pytest.raises(Exception, match="fixtures"):
        config(
            "probes:"
            + speech_yaml("x", "deepgram", "ws://h/", f"    fixtures_dir: {tmp_path}\n").replace(
                "[run_tests, stop_music]", "[c]"
            )
        )


async def test_golden_exposition_of_the_speech_kind(start_daemon: StartDaemon) -> None:
    # Each turn ends with a close, so close codes and reconnects have samples too.
    async with SttTarget("deepgram", fast=True, faults=SttFaults(close_code=1011)) as dg:
        extra = "    connection: {reconnect: {initial: 50ms, max: 100ms}}\n"
        text = "global:\n  labels: {location: test-lab}\nprobes:" + speech_yaml(
            "speech", "deepgram", dg.url, extra
        )
        d = await start_daemon(config(text))
        await wait_until(
            lambda: d.count("probe_reconnect_duration_seconds_count", probe="speech") >= 1, 20
        )
        got = render(parse_exposition(await d.scrape()))
    golden = Path(__file__).parent / "golden" / "speech.txt"
    if os.environ.get("PROBED_UPDATE_GOLDEN"):
        golden.write_text(got)
    assert got == golden.read_text(), "the speech kind's metric contract changed"
