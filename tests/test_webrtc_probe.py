"""The webrtc kind through the daemon, against the reference WHIP target: real aiortc peers."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from probed.series import Counter, Registry

pytest.importorskip("aiortc")

from probed import kinds, logs
from probed.config import ConfigError, ProbeConfig, load_config
from probed.probes.webrtc import _Loss
from probed.status import ProbeStatus
from probed.targets.whip import Answer, EchoMode, WhipTarget
from probed.webrtc.loopback import loopback_candidates
from tests.conftest import RunningDaemon, bound, config, parse_exposition, wait_until
from tests.test_exposition import render

StartDaemon = Callable[..., Awaitable[RunningDaemon]]


# aiortc's media work (Opus, SRTP, the jitter buffer) runs on the loop it measures on, and on a
# busy machine most 100 ms round trips overlap a lag above the 5 ms default: these tests are about
# WebRTC, not the taint rule (tests/test_selfmon.py), so they tolerate more lag.
GLOBAL = "global:\n  loop_lag_threshold: 100ms\n"


def webrtc_yaml(url: str, *, name: str = "rtc", extra: str = "") -> str:
    return GLOBAL + "probes:\n" + probe_yaml(url, name=name, extra=extra)


def probe_yaml(url: str, *, name: str = "rtc", extra: str = "") -> str:
    # A short cycle keeps the suite fast: a signal every 500 ms, its echo looked for 300 ms.
    return f"""\
  - name: {name}
    kind: webrtc
    url: {url}
    interval: 500ms
    timeout: 300ms
    media_timeout: 1s
    reconnect: {{initial: 50ms, max: 200ms}}
{extra}"""


@pytest.fixture(autouse=True)
def _loopback() -> Iterator[None]:
    with loopback_candidates():
        yield


@pytest.fixture
async def reflect() -> AsyncIterator[WhipTarget]:
    async with WhipTarget(delay=0.1, mode=EchoMode.REFLECT) as target:
        yield target


def status(d: RunningDaemon, name: str = "rtc") -> ProbeStatus:
    [probe] = [p for p in d.daemon.exposition.probes() if p.name == name]
    return probe.status


async def test_added_delay_shows_as_round_trip_plus_a_small_base(
    reflect: WhipTarget, start_daemon: StartDaemon
) -> None:
    d = await start_daemon(config(webrtc_yaml(reflect.url)))
    await wait_until(
        lambda: (
            d.count("probe_webrtc_audio_roundtrip_seconds_count", probe="rtc") >= 8
            and d.count("probe_webrtc_rtt_seconds_count", probe="rtc") >= 2
        ),
        within=20,
        what="8 echoes and 2 RTCP round trips",
    )
    trips = list(status(d).recent)
    base = [t - 0.1 for t in trips]
    print(
        f"\nreflect +100 ms through the daemon: base median {statistics.median(base) * 1e3:.1f} ms,"
        f" spread (stdev) {statistics.stdev(base) * 1e3:.1f} ms, min {min(base) * 1e3:.1f},"
        f" max {max(base) * 1e3:.1f} ms over {len(base)} echoes"
    )
    # The delay is a floor; the base on loopback is a few ms (generous: the machine is shared).
    assert all(0.1 <= t < 0.1 + bound(0.08) for t in trips), trips
    assert d.count("probe_webrtc_echoes_total", probe="rtc", result="ok") >= 8
    assert d.count("probe_webrtc_echoes_total", probe="rtc", result="no_echo") == 0
    assert d.value("probe_success", probe="rtc") == 1
    assert d.value("probe_connections_open", probe="rtc") == 1
    # The probe's own receive buffering is its own figure, not part of the round trip.
    assert d.count("probe_webrtc_client_buffering_seconds_count", probe="rtc") >= 1
    # Set-up: one session, its phases add up to the set-up time.
    assert d.count("probe_webrtc_setup_seconds_count", probe="rtc") == 1
    phases = [
        d.count("probe_connect_phase_seconds", probe="rtc", phase=p)
        for p in ("gather", "signaling", "ice", "dtls")
    ]
    setup = d.count("probe_webrtc_setup_seconds_sum", probe="rtc")
    assert all(p > 0 for p in phases) and sum(phases) == pytest.approx(setup, rel=1e-3)
    # RTCP figures in seconds, plausible on loopback.
    rtt = d.count("probe_webrtc_rtt_seconds_sum", probe="rtc") / d.count(
        "probe_webrtc_rtt_seconds_count", probe="rtc"
    )
    assert 0 <= rtt < bound(0.05), rtt
    await wait_until(
        lambda: d.value("probe_webrtc_jitter_seconds", probe="rtc", direction="inbound") is not None
    )
    for direction in ("inbound", "outbound"):
        jitter = d.value("probe_webrtc_jitter_seconds", probe="rtc", direction=direction)
        assert jitter is not None and 0 <= jitter < bound(0.05), (direction, jitter)
        assert d.value("probe_webrtc_packets_lost_total", probe="rtc", direction=direction) == 0
    assert d.count("probe_audio_send_lag_seconds_count", probe="rtc") > 100  # 50 frames a second


async def test_echo_off_reports_no_round_trip_and_counts_the_failures(
    reflect: WhipTarget, start_daemon: StartDaemon
) -> None:
    reflect.echo_enabled = False
    d = await start_daemon(config(webrtc_yaml(reflect.url)))
    await wait_until(
        lambda: d.count("probe_webrtc_echoes_total", probe="rtc", result="no_echo") >= 2,
        within=15,
    )
    assert d.count("probe_webrtc_audio_roundtrip_seconds_count", probe="rtc") == 0
    assert d.value("probe_success", probe="rtc") == 0
    assert status(d).lost >= 2 and not status(d).recent
    # Silence still flows: the session is up, not stalled; echo back on, measured again.
    assert d.value("probe_connections_open", probe="rtc") == 1
    reflect.echo_enabled = True
    await wait_until(
        lambda: d.count("probe_webrtc_audio_roundtrip_seconds_count", probe="rtc") >= 1,
        within=15,
    )
    await wait_until(lambda: d.value("probe_success", probe="rtc") == 1)
    assert d.count("probe_disconnects_total", probe="rtc", reason="stalled") == 0


async def test_broken_endpoints_are_connect_errors_retried_with_backoff(
    reflect: WhipTarget, start_daemon: StartDaemon
) -> None:
    async with WhipTarget() as gone:
        nothing_there = gone.url
    reflect.refuse(503)
    started = time.monotonic()
    d = await start_daemon(
        config(webrtc_yaml(reflect.url) + probe_yaml(nothing_there, name="gone"))
    )
    await wait_until(
        lambda: (
            d.count("probe_connect_errors_total", probe="rtc", reason="http_503") >= 3
            and d.count("probe_connect_errors_total", probe="gone", reason="refused") >= 3
        ),
        what="repeated classified connect errors",
    )
    assert d.value("probe_success", probe="rtc") == 0
    last_error = status(d).last_error
    assert last_error is not None and last_error.reason == "http_503"
    # A malformed answer is its own reason; the probe goes on retrying.
    reflect.refuse(None)
    reflect.answer = Answer.MALFORMED
    await wait_until(
        lambda: d.count("probe_connect_errors_total", probe="rtc", reason="bad_answer") >= 1
    )
    reflect.heal()
    await wait_until(lambda: d.value("probe_connections_open", probe="rtc") == 1, within=15)
    await wait_until(lambda: d.value("probe_success", probe="rtc") == 1, within=15)
    # Backoff, not a spin: every retry waits at least `initial` (50 ms).
    assert reflect.posts <= (time.monotonic() - started) / 0.05 + 2, reflect.posts
    assert d.count("probed_probe_restarts_total", probe="rtc") == 0
    assert d.count("probed_probe_restarts_total", probe="gone") == 0


async def test_retry_after_of_a_refusing_endpoint_is_honoured(
    reflect: WhipTarget, start_daemon: StartDaemon
) -> None:
    reflect.refuse(503, retry_after=1)
    d = await start_daemon(config(webrtc_yaml(reflect.url)))

    def errors() -> float:
        return d.count("probe_connect_errors_total", probe="rtc", reason="http_503")

    await wait_until(lambda: errors() >= 1)
    first = time.monotonic()
    await wait_until(lambda: errors() >= 2)
    # Without Retry-After the next attempt would come 50 to 200 ms later (reconnect policy).
    assert time.monotonic() - first >= 0.9


async def test_a_stalled_session_is_classified_and_reconnected(
    reflect: WhipTarget, start_daemon: StartDaemon
) -> None:
    d = await start_daemon(config(webrtc_yaml(reflect.url)))
    await wait_until(lambda: d.value("probe_connections_open", probe="rtc") == 1, within=15)
    reflect.muted = True  # no media at all: the session has stalled
    await wait_until(
        lambda: d.count("probe_disconnects_total", probe="rtc", reason="stalled") >= 1, within=15
    )
    assert d.value("probe_success", probe="rtc") == 0
    reflect.muted = False
    await wait_until(
        lambda: d.count("probe_reconnect_duration_seconds_count", probe="rtc") >= 1, within=15
    )
    await wait_until(lambda: d.value("probe_success", probe="rtc") == 1, within=15)
    assert d.count("probed_probe_restarts_total", probe="rtc") == 0


async def test_a_far_end_that_drops_the_peer_is_a_reset(
    reflect: WhipTarget, start_daemon: StartDaemon
) -> None:
    # media_timeout well above how long aiortc takes to see the peer connection end.
    yaml = webrtc_yaml(reflect.url).replace("media_timeout: 1s", "media_timeout: 5s")
    d = await start_daemon(config(yaml))
    # A session in full flow (a peer dropped within its first instants may never tell us: then
    # the media timeout ends it as stalled).
    await wait_until(
        lambda: d.count("probe_webrtc_audio_roundtrip_seconds_count", probe="rtc") >= 1, within=15
    )
    await reflect.drop_sessions()  # the far end restarts under us
    await wait_until(
        lambda: d.count("probe_disconnects_total", probe="rtc", reason="reset") >= 1, within=15
    )
    await wait_until(
        lambda: d.count("probe_reconnect_duration_seconds_count", probe="rtc") >= 1, within=15
    )
    await wait_until(lambda: d.value("probe_connections_open", probe="rtc") == 1, within=15)
    assert d.count("probe_webrtc_setup_seconds_count", probe="rtc") == 2
    assert d.count("probe_disconnects_total", probe="rtc", reason="stalled") == 0


async def test_churn_sets_up_a_new_session_at_once(
    reflect: WhipTarget, start_daemon: StartDaemon
) -> None:
    d = await start_daemon(config(webrtc_yaml(reflect.url, extra="    churn: 1s\n")))
    await wait_until(
        lambda: d.count("probe_webrtc_setup_seconds_count", probe="rtc") >= 3, within=15
    )
    assert d.count("probe_disconnects_total", probe="rtc", reason="churn") >= 2
    assert reflect.deletes >= 2  # each churned session was deleted, not abandoned
    await wait_until(lambda: d.value("probe_success", probe="rtc") == 1)


async def test_reload_keeps_an_unchanged_webrtc_probe(
    reflect: WhipTarget, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    path = tmp_path / "probed.yaml"
    path.write_text(webrtc_yaml(reflect.url))
    d = await start_daemon(load_config(path), path)
    await wait_until(lambda: d.value("probe_connections_open", probe="rtc") == 1, within=15)
    path.write_text(webrtc_yaml(reflect.url) + probe_yaml(reflect.url, name="rtc2"))
    ok, summary = await d.daemon.reload()
    assert ok and "kept: 1" in summary and "started: 1" in summary, summary
    await wait_until(lambda: d.value("probe_connections_open", probe="rtc2") == 1, within=15)
    assert reflect.posts == 2  # rtc's session was not touched
    assert d.count("probe_webrtc_setup_seconds_count", probe="rtc") == 1


async def test_once_measures_one_echo() -> None:
    async with WhipTarget(delay=0.05, mode=EchoMode.REFLECT) as target:
        cfg: ProbeConfig = config(webrtc_yaml(target.url)).probes[0]
        probe = kinds.build(cfg, kinds.new_metrics(cfg), logs.get(probe="rtc"))
        async with asyncio.timeout(bound(15)):
            assert await probe.once()
        assert target.deletes == 1
        target.echo_enabled = False
        async with asyncio.timeout(bound(15)):
            assert not await probe.once()
        target.refuse(503)
        assert not await probe.once()


def test_loss_counter_follows_the_cumulative_figure_across_sessions() -> None:
    registry = Registry()
    loss = _Loss(registry.register(Counter("lost_total", "x", ["direction"])))

    def total() -> float:
        return registry.get_sample_value("lost_total", {"direction": "inbound"}) or 0.0

    for cumulative in (None, 0, 3, 2, 5):  # duplicates can lower RTCP's figure for a while
        loss.update("inbound", cumulative)
    assert total() == 5
    loss.new_session()  # a new session's streams count from zero again
    for cumulative in (1, 4):
        loss.update("inbound", cumulative)
    assert total() == 9


def test_config_checks() -> None:
    cfg = config(webrtc_yaml("https://whip.example.com/whip?token=x"))
    assert cfg.probes[0].target == "https://whip.example.com/whip"
    assert cfg.probes[0].slo_thresholds() == (0.3,)  # the default audio round-trip SLO
    with pytest.raises(ConfigError, match="signal must be shorter than interval"):
        config(webrtc_yaml("http://h/whip").replace("timeout: 300ms", "timeout: 450ms"))
    with pytest.raises(ConfigError, match="TURN server needs username and credential"):
        config(webrtc_yaml("http://h/whip", extra="    ice_servers: [{urls: turn:t:3478}]\n"))
    with pytest.raises(ConfigError, match="must be a http:// or https:// URL"):
        config(webrtc_yaml("ws://h/whip"))
    with pytest.raises(ConfigError, match="is set by the HTTP client"):
        config(webrtc_yaml("http://h/whip", extra="    headers: {Content-Type: text/plain}\n"))
    ok = config(
        webrtc_yaml(
            "http://h/whip",
            extra="    codecs: [PCMU, opus]\n"
            "    ice_servers:\n"
            "      - urls: stun:stun.example.com:3478\n"
            "      - {urls: [turn:t:3478], username: u, credential: secret-c}\n",
        )
    )
    assert "secret-c" not in repr(ok)


async def test_check_says_when_the_webrtc_extra_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(webrtc_yaml("http://127.0.0.1:1/whip"))

    async def check(*blocked: str) -> tuple[int, str]:
        # None in sys.modules makes an import fail as if the package were not installed.
        script = (
            "import sys\n"
            f"for m in {list(blocked)!r}: sys.modules[m] = None\n"
            "from probed.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            "check",
            "-c",
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    code, out = await check()
    assert code == 0 and "OK, 1 probe(s): rtc" in out, out
    code, out = await check("aiortc")
    assert code == 1, out
    assert "needs the webrtc extra (aiortc not installed)" in out
    assert "pip install 'probed[webrtc]'" in out


async def test_golden_exposition_of_the_webrtc_kind(
    reflect: WhipTarget, start_daemon: StartDaemon
) -> None:
    text = webrtc_yaml(reflect.url).replace(GLOBAL, GLOBAL + "  labels: {location: test-lab}\n")
    d = await start_daemon(config(text))
    await wait_until(
        lambda: (
            d.count("probe_webrtc_audio_roundtrip_seconds_count", probe="rtc") >= 1
            and d.value("probe_webrtc_jitter_seconds", probe="rtc", direction="inbound") is not None
        ),
        within=15,
    )
    got = render(parse_exposition(await d.scrape()))
    golden = Path(__file__).parent / "golden" / "webrtc.txt"
    if os.environ.get("PROBED_UPDATE_GOLDEN"):
        golden.write_text(got)
    assert got == golden.read_text(), "the webrtc kind's metric contract changed"


def test_the_demo_config_with_its_webrtc_probe_is_valid() -> None:
    from probed.demo import DEMO_CONFIG, DEMO_WEBRTC

    text = DEMO_CONFIG.format(
        fast="ws://127.0.0.1:1/",
        slow="ws://127.0.0.1:2/",
        proxied="ws://127.0.0.1:3/ws",
        api="http://127.0.0.1:1/-/status",
        room="ws://127.0.0.1:4/",
        stt="ws://127.0.0.1:6/v1/listen",
        voice="ws://127.0.0.1:7/",
    ) + DEMO_WEBRTC.format(whip="http://127.0.0.1:5/whip")
    assert config(text).probes[-1].kind == "webrtc"


async def test_the_example_config_runs_once(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "examples" / "webrtc.yaml"
    async with WhipTarget(delay=0.02, mode=EchoMode.REFLECT) as target:
        path = tmp_path / "webrtc.yaml"
        path.write_text(example.read_text().replace("http://127.0.0.1:8769/whip", target.url))
        [cfg] = load_config(path).probes
        metrics = kinds.new_metrics(cfg)
        async with asyncio.timeout(bound(15)):
            assert await kinds.build(cfg, metrics, logs.get(probe=cfg.name)).once()
    # The same timeline the status page shows: connected, the echo, RTCP, the end.
    [cycle] = metrics.status.cycles()
    assert [s.what for s in cycle.steps][:2] == ["connected", "echo"]
    latest = metrics.status.recent.latest()
    assert latest is not None and 0.02 <= latest < 0.02 + bound(0.08)
