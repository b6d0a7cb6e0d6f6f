"""The voice_agent kind through the daemon, against the Gemini Live and OpenAI Realtime
emulators (fixture recogniser: the fast mode): latencies track the configured delays, wrong and
missing tool calls and agents that never yield are counted, a go-away is resumed at once with
the turn in flight measured whole."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from probed import kinds, logs
from probed.config import ProbeConfig
from probed.config.schema.voice_agent import VoiceAgentProbeConfig
from probed.speech.provider import ProviderEndpoint
from probed.targets.voice import VoiceBehaviour, VoiceTarget
from probed.voice.provider import build_voice_adapter
from tests.conftest import RunningDaemon, bound, config, parse_exposition
from tests.test_exposition import render

StartDaemon = Callable[..., Awaitable[RunningDaemon]]
ADAPTER = {"gemini": "gemini_live", "openai": "openai_realtime"}
# Generous: the machine is shared and noisy.
SLACK = 0.3


def probe_yaml(name: str, protocol: str, url: str, extra: str = "") -> str:
    return f"""
  - name: {name}
    kind: voice_agent
    adapter: {ADAPTER[protocol]}
    url: {url}
    start_stagger: 10ms
{extra}"""


class Snapshot:
    """Every sample of one collect. A collect of a dozen voice probes is not free and runs on
    the loop the probes measure on: asking it once per poll keeps the test from stalling the
    loop (which would withhold the measurements as tainted)."""

    def __init__(self, d: RunningDaemon) -> None:
        self.d = d
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        self.refresh()

    def refresh(self) -> None:
        self.samples = {}
        for family in self.d.daemon.exposition.collect():
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append((sample.labels, sample.value))

    def count(self, name: str, **labels: str) -> float:
        for have, value in self.samples.get(name, []):
            if all(have.get(k) == v for k, v in labels.items()):
                return float(value)
        return 0.0


class Samples:
    """Single observations read off a histogram's sum as its count steps by one."""

    def __init__(self, snap: Snapshot, family: str, probe: str) -> None:
        self.snap, self.family, self.probe = snap, family, probe
        self.count, self.sum = 0.0, 0.0
        self.values: list[float] = []

    def poll(self) -> None:
        count = self.snap.count(f"{self.family}_count", probe=self.probe)
        total = self.snap.count(f"{self.family}_sum", probe=self.probe)
        if count == self.count + 1:
            self.values.append(total - self.sum)
        self.count, self.sum = count, total

    def mean(self) -> float:
        return self.sum / self.count


async def poll_until(
    check: Callable[[], bool],
    within: float,
    what: str,
    every: float = 0.2,
    show: Callable[[], object] = lambda: None,
) -> None:
    """Like conftest.wait_until, but scraping the registries less often: a scrape of a dozen
    voice probes is not free, and it runs on the loop the probes measure on."""
    deadline = time.monotonic() + bound(within)
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {bound(within)}s waiting for {what}: {show()}")
        await asyncio.sleep(every)


def base_and_spread(values: list[float], configured: float) -> tuple[float, float]:
    return (
        round(statistics.median(values) - configured, 3),
        round(max(values) - min(values), 3),
    )


async def test_latencies_track_the_delays_and_wrong_or_missing_calls_are_counted(
    start_daemon: StartDaemon,
) -> None:
    delay, tool_delay = 0.15, 0.4
    fast = VoiceBehaviour(delay=delay, tool_delay=tool_delay, answer_seconds=0.3)
    expected = {"gemini": "wrong", "openai": "missing"}
    wrong = VoiceBehaviour(delay=0.05, answer_seconds=0.2, tool_fault="wrong_name")
    missing = VoiceBehaviour(delay=0.05, answer_seconds=0.2, tool_fault="missing")
    async with (
        VoiceTarget("gemini", behaviour=fast) as g_target,
        VoiceTarget("openai", behaviour=fast) as o_target,
        VoiceTarget("gemini", behaviour=wrong) as g_broken,
        VoiceTarget("openai", behaviour=missing) as o_broken,
    ):
        flush = "    end_of_speech: flush\n    interval: 1s\n"
        tool_clip, talk_clip = "    fixtures: [create_function]\n", "    fixtures: [run_tests]\n"
        # Six probes at once on a busy machine: with the 5 ms default, nearly every 0.5 s tool
        # call overlaps some loop lag and is withheld as tainted. This test is about latency
        # tracking, not the taint rule (tests/test_selfmon.py), so it tolerates more lag.
        text = "global:\n  loop_lag_threshold: 100ms\nprobes:"
        for p, target, broken in (("gemini", g_target, g_broken), ("openai", o_target, o_broken)):
            text += probe_yaml(f"{p}-tool", p, target.url, flush + tool_clip)
            text += probe_yaml(f"{p}-talk", p, target.url, flush + talk_clip)
            text += probe_yaml(f"{p}-fault", p, broken.url, flush + tool_clip)
        d = await start_daemon(config(text))
        snap = Snapshot(d)
        samples = {
            p: (
                Samples(snap, "probe_voice_tool_call_seconds", f"{p}-tool"),
                Samples(snap, "probe_voice_response_seconds", f"{p}-talk"),
                Samples(snap, "probe_stt_final_seconds", f"{p}-talk"),
            )
            for p in expected
        }

        def enough() -> bool:
            snap.refresh()
            for three in samples.values():
                for s in three:
                    s.poll()
            return all(
                len(tool.values) >= 3
                and len(talk.values) >= 3
                and snap.count(
                    "probe_voice_tool_calls_total", probe=f"{p}-fault", result=expected[p]
                )
                >= 2
                for p, (tool, talk, _heard) in samples.items()
            )

        await poll_until(
            enough,
            within=60,
            what="three turns each",
            show=lambda: (
                [(s.probe, s.values) for three in samples.values() for s in three]
                + [
                    snap.count(
                        "probe_voice_tool_calls_total", probe=f"{p}-fault", result=expected[p]
                    )
                    for p in expected
                ]
            ),
        )
        for p, (tool, talk, heard) in samples.items():
            for s, configured in ((tool, tool_delay), (talk, delay)):
                assert all(configured <= v <= configured + SLACK for v in s.values), s.values
                assert configured <= s.mean() <= configured + SLACK
            print(p, "measured minus configured (median, spread): tool call",
                  base_and_spread(tool.values, tool_delay), "response",
                  base_and_spread(talk.values, delay), "stt final",
                  base_and_spread(heard.values, 0))  # fmt: skip
            assert d.count("probe_voice_tool_calls_total", probe=f"{p}-tool", result="ok") >= 3
            assert d.count("probe_voice_tool_calls_total", probe=f"{p}-tool", result="wrong") == 0
            # run_tests asks for no function: no call is expected and none is judged.
            assert d.count("probe_voice_tool_calls_total", probe=f"{p}-talk", result="ok") == 0
            assert d.count("probe_voice_turns_total", probe=f"{p}-talk", result="ok") >= 3
            assert d.value("probe_success", probe=f"{p}-tool") == 1
            assert d.value("probe_success", probe=f"{p}-fault") == 0
            # The agent still answered after the bad call: the conversation went on.
            assert d.count("probe_voice_turns_total", probe=f"{p}-fault", result="ok") >= 2
            info = d.value("probe_info", probe=f"{p}-tool", adapter=f"{ADAPTER[p]}/flush")
            assert info == 1
            # One held session each: never reconnected.
            assert d.count("probe_connect_duration_seconds_count", probe=f"{p}-tool") == 1


async def test_barge_in_is_timed_and_an_agent_that_never_yields_is_counted(
    start_daemon: StartDaemon,
) -> None:
    yield_delay = 0.1
    yields = VoiceBehaviour(delay=0.1, answer_seconds=1.2, yield_delay=yield_delay)
    never = VoiceBehaviour(delay=0.1, answer_seconds=1.2, yield_delay=None)
    extra = (
        "    fixtures: [stop_music]\n    interval: 1s\n"
        "    options: {silence_duration_ms: 300}\n"
        "    barge_in: {every: 1, after: 200ms, yield_timeout: 800ms, fixture: run_tests}\n"
    )
    async with (
        VoiceTarget("gemini", behaviour=yields) as g_yields,
        VoiceTarget("gemini", behaviour=never) as g_never,
        VoiceTarget("openai", behaviour=yields) as o_yields,
        VoiceTarget("openai", behaviour=never) as o_never,
    ):
        # The four emulators run on the loop the probes measure on, and their work stalls it by
        # more than the 5 ms default now and then: most 100 ms barge-ins were withheld as
        # tainted. This test is about barge-in, not the taint rule (tests/test_selfmon.py).
        text = "global:\n  loop_lag_threshold: 100ms\nprobes:" + "".join(
            probe_yaml(name, protocol, t.url, extra)
            for name, protocol, t in (
                ("g-yields", "gemini", g_yields),
                ("g-never", "gemini", g_never),
                ("o-yields", "openai", o_yields),
                ("o-never", "openai", o_never),
            )
        )
        d = await start_daemon(config(text))
        snap = Snapshot(d)
        timed = {
            p: Samples(snap, "probe_voice_bargein_seconds", p) for p in ("g-yields", "o-yields")
        }

        def enough() -> bool:
            snap.refresh()
            for s in timed.values():
                s.poll()
            return all(len(s.values) >= 2 for s in timed.values()) and all(
                snap.count("probe_voice_bargeins_total", probe=p, result="never") >= 2
                for p in ("g-never", "o-never")
            )

        def show() -> object:
            return {
                (name, fam, res): snap.count(fam, probe=name, **({"result": res} if res else {}))
                for name in ("g-yields", "o-yields", "g-never", "o-never")
                for fam, res in (
                    ("probe_voice_bargeins_total", "yielded"),
                    ("probe_voice_bargeins_total", "never"),
                    ("probe_voice_bargein_seconds_count", ""),
                    ("probe_measurements_tainted_total", ""),
                )
            }

        await poll_until(enough, within=35, what="two barge-ins each", show=show)
        for name, s in timed.items():
            assert all(yield_delay <= v <= yield_delay + SLACK for v in s.values), s.values
            assert d.count("probe_voice_bargeins_total", probe=name, result="never") == 0
            print(name, "barge-in minus yield delay (median, spread)",
                  base_and_spread(s.values, yield_delay))  # fmt: skip
        for name in ("g-never", "o-never"):
            assert d.count("probe_voice_bargeins_total", probe=name, result="yielded") == 0
            assert d.count("probe_voice_bargein_seconds_count", probe=name) == 0
            assert d.value("probe_success", probe=name) == 0


async def test_go_away_is_resumed_at_once_and_the_turn_in_flight_is_kept(
    start_daemon: StartDaemon,
) -> None:
    # The go-away comes 1 s into every connection, while its first turn is being measured; the
    # emulator would close 2.5 s later.
    behaviour = VoiceBehaviour(delay=0.1, answer_seconds=0.3, session_limit=3.5, go_away_lead=2.5)
    async with VoiceTarget("gemini", behaviour=behaviour) as target:
        extra = "    end_of_speech: flush\n    interval: 500ms\n    fixtures: [run_tests]\n"
        # A resumption is timed over seconds of a busy machine; this test is about go-away
        # handling, not the taint rule (tests/test_selfmon.py), so it tolerates more lag.
        text = "global:\n  loop_lag_threshold: 100ms\nprobes:"
        d = await start_daemon(config(text + probe_yaml("resume", "gemini", target.url, extra)))

        def resumed_twice() -> bool:
            return d.count("probe_voice_resumptions_total", probe="resume", result="resumed") >= 2

        await poll_until(resumed_twice, within=25, what="two resumptions")
        assert d.count("probe_disconnects_total", probe="resume", reason="go_away") >= 2

        def timed_twice() -> bool:
            # A resumption timed while the loop lagged is withheld (tainted): wait for a third.
            return d.count("probe_voice_resume_seconds_count", probe="resume") >= 2

        await poll_until(timed_twice, within=25, what="two resumptions timed")
        mean = d.count("probe_voice_resume_seconds_sum", probe="resume") / d.count(
            "probe_voice_resume_seconds_count", probe="resume"
        )
        # From the go-away to the resumed session: the rest of the turn (about 1 s of speech
        # and the answer), then at once, no backoff.
        assert mean < bound(3.0), mean
        # Every go-away came mid-turn, and no turn was lost to it.
        assert d.count("probe_voice_turns_total", probe="resume", result="ok") >= 2
        assert d.count("probe_voice_turns_total", probe="resume", result="disconnected") == 0
        assert d.count("probe_disconnects_total", probe="resume", reason="server_close") == 0
        assert target.counters.resumed >= 2
        print("go-away to resumed (mean)", round(mean, 3))


async def test_a_refused_resumption_is_counted_and_the_next_session_starts_fresh() -> None:
    async with VoiceTarget("gemini") as target:
        text = "probes:" + probe_yaml("refused", "gemini", target.url, "    end_of_speech: flush\n")
        cfg = config(text).probes[0]
        metrics = kinds.new_metrics(cfg)
        probe = kinds.build(cfg, metrics, logs.get(probe="refused"))
        supervisor = probe.supervisor  # type: ignore[attr-defined]
        supervisor.resume_handle = "h_forged"
        with pytest.raises(Exception, match="setup"):
            await supervisor.connect()
        assert supervisor.resume_handle is None and target.counters.refused == 1
        session = await supervisor.connect()  # fresh: accepted
        await session.ws.close()
        value = metrics.registry.get_sample_value
        assert value("probe_voice_resumptions_total", {"result": "refused"}) == 1


def test_gemini_sessions_run_without_the_ping_keepalive() -> None:
    for adapter, mode in (("gemini", "off"), ("openai", "ping")):
        cfg = config("probes:" + probe_yaml("k", adapter, "ws://127.0.0.1:9/x")).probes[0]
        assert isinstance(cfg, VoiceAgentProbeConfig)
        endpoint = ProviderEndpoint(cfg, build_voice_adapter(cfg))
        assert endpoint.connection.keepalive.mode == mode


async def test_once_says_one_fixture() -> None:
    behaviour = VoiceBehaviour(delay=0.05, answer_seconds=0.2)
    async with VoiceTarget("openai", behaviour=behaviour) as target:
        extra = "    end_of_speech: flush\n    fixtures: [run_tests]\n"
        text = "probes:" + probe_yaml("once", "openai", target.url, extra)
        cfg: ProbeConfig = config(text).probes[0]
        probe = kinds.build(cfg, kinds.new_metrics(cfg), logs.get(probe="once"))
        assert await probe.once()


def test_bad_options_fixtures_and_expectations_are_check_errors() -> None:
    base = "probes:" + probe_yaml("x", "gemini", "ws://h/")
    with pytest.raises(Exception, match="not valid for the gemini_live adapter"):
        config(base + "    options: {silense_duration_ms: 300}\n")
    with pytest.raises(Exception, match="not valid for the openai_realtime adapter"):
        config(base.replace("gemini_live", "openai_realtime") + "    options: {model: x}\n")
    with pytest.raises(Exception, match=r"fixtures.*no clip 'nope'"):
        config(base + "    fixtures: [nope]\n")
    with pytest.raises(Exception, match="barge_in"):
        config(base + "    barge_in: {fixture: nope}\n")
    with pytest.raises(Exception, match="not the declared tool"):
        config(base + "    expect: {create_function: {tool: other}}\n")
    with pytest.raises(Exception, match="never played"):
        config(base + "    fixtures: [run_tests]\n    expect: {create_function: {}}\n")
    with pytest.raises(Exception, match="not both"):
        config(base + "    api_key: k\n    ephemeral_token: t\n")
    # Default expectations for fixtures that are not played are fine.
    assert config(base + "    fixtures: [lights_on]\n").probes[0].name == "x"


async def test_golden_exposition_of_the_voice_agent_kind(start_daemon: StartDaemon) -> None:
    # A session limit without go-away: the emulator closes (1011), so close codes and
    # reconnects have samples too.
    behaviour = VoiceBehaviour(delay=0.05, answer_seconds=0.2, session_limit=0.5, go_away=False)
    async with VoiceTarget("gemini", behaviour=behaviour) as target:
        extra = (
            "    end_of_speech: flush\n    interval: 300ms\n    fixtures: [run_tests]\n"
            "    connection: {reconnect: {initial: 50ms, max: 100ms}}\n"
        )
        text = "global:\n  labels: {location: test-lab}\nprobes:" + probe_yaml(
            "voice", "gemini", target.url, extra
        )
        d = await start_daemon(config(text))
        await poll_until(
            lambda: d.count("probe_reconnect_duration_seconds_count", probe="voice") >= 1,
            20,
            "a reconnect",
        )
        got = render(parse_exposition(await d.scrape()))
    golden = Path(__file__).parent / "golden" / "voice_agent.txt"
    if os.environ.get("PROBED_UPDATE_GOLDEN"):
        golden.write_text(got)
    assert got == golden.read_text(), "the voice_agent kind's metric contract changed"


async def test_a_session_limit_without_go_away_is_a_disconnect_not_a_resumption(
    start_daemon: StartDaemon,
) -> None:
    # OpenAI: session_expired (fatal: the probe ends the session as the server's doing) then a
    # close (1001); no go-away, nothing to resume.
    behaviour = VoiceBehaviour(delay=0.05, answer_seconds=0.2, session_limit=0.6)
    async with VoiceTarget("openai", behaviour=behaviour) as target:
        extra = (
            "    end_of_speech: flush\n    interval: 300ms\n    fixtures: [run_tests]\n"
            "    connection: {reconnect: {initial: 50ms, max: 100ms}}\n"
        )
        d = await start_daemon(config("probes:" + probe_yaml("limit", "openai", target.url, extra)))
        await poll_until(
            lambda: d.count("probe_disconnects_total", probe="limit", reason="server_close") >= 2,
            15,
            "two session-limit disconnects",
        )
        assert d.count("probe_disconnects_total", probe="limit", reason="go_away") == 0
        assert (
            sum(
                d.count("probe_voice_resumptions_total", probe="limit", result=r)
                for r in ("resumed", "fresh", "refused")
            )
            == 0
        )
