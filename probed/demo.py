"""`probed demo`: reference targets on loopback, the daemon probing them, a live summary.

Part of the command-line layer: with cli.py, the only place that starts reference targets.
The embedded config is ordinary probed YAML, printed at start so a new user can copy it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TextIO

from probed import __version__
from probed.config import parse_config
from probed.config.schema.webrtc import webrtc_extra_missing
from probed.daemon import Daemon
from probed.status import RECENT, ProbeStatus
from probed.targets.echo import EchoTarget
from probed.targets.proxy import FaultProxy
from probed.targets.pubsub import PubSubTarget
from probed.targets.stt import SttTarget
from probed.targets.voice import VoiceBehaviour, VoiceTarget

DEMO_LISTEN = "127.0.0.1:9464"
_SUMMARY_EVERY = 5.0

DEMO_CONFIG = """\
global:
  labels: {{location: demo}}
probes:
  # A healthy echo server on loopback.
  - name: echo-local
    kind: echo
    url: {fast}
    interval: 250ms
    timeout: 2s
  # Replies after 40 ms +/- 20 ms: some miss the 50 ms SLO.
  - name: echo-slow
    kind: echo
    url: {slow}
    interval: 250ms
    timeout: 2s
  # Through a fault-injecting proxy that the demo breaks now and then; also closes on purpose
  # (churn) so reconnect time is measured while all is well.
  - name: echo-faults
    kind: echo
    url: {proxied}
    interval: 500ms
    timeout: 2s
    connection:
      churn: 1m
      keepalive: {{interval: 3s, timeout: 2s}}
  # A chat room: one publisher, three subscribers, publisher-to-subscriber time on one clock.
  # The server wants a join first, acks each publish and has other users chatting.
  - name: room-fanout
    kind: fanout
    interval: 250ms
    timeout: 2s
    publisher:
      url: {room}
      setup:
        - name: join
          send: '{{"type":"join","room":"lobby"}}'
          expect:
            where: {{type: joined}}
    subscribers:
      url: {room}
      count: 3
      setup:
        - name: join
          send: '{{"type":"join","room":"lobby"}}'
          expect:
            where: {{type: joined}}
    message:
      template: '{{"type":"publish","room":"lobby","id":"{{id}}"}}'
      match:
        json: id
        where: {{type: message}}
  # Speech-to-text: fixture speech at real-time pace to a Deepgram-protocol emulator (fast
  # mode: it endpoints on energy and answers with the fixture's transcript, 150 ms later).
  - name: stt-deepgram
    kind: speech
    adapter: deepgram
    url: {stt}
    interval: 4s
    end_of_speech: flush
    fixtures: [lights_on, run_tests, weather_question, create_function]
  # A voice agent: a Gemini Live-protocol emulator (fast recogniser: it matches the bundled
  # fixtures instead of decoding them). create_function must call generate_code (400 ms), the
  # spoken answer follows; every third turn the probe talks over the answer (it yields after
  # 100 ms); every minute the emulator sends a go-away and the probe resumes the session.
  - name: voice-gemini
    kind: voice_agent
    adapter: gemini_live
    url: {voice}
    interval: 6s
    end_of_speech: flush
    fixtures: [create_function, run_tests, lights_on]
    barge_in: {{every: 3, fixture: stop_music}}
  # The HTTP API beside the realtime service (here: the echo target's status endpoint).
  - name: api-status
    kind: http
    url: {api}
    interval: 1s
    slo: {{latency: 200ms}}
"""

# Added when the webrtc extra is installed.
DEMO_WEBRTC = """\
  # WebRTC audio over WHIP: a known chirp every second, its echo timed where its packets
  # arrive (the probe's own jitter buffer is a separate figure). The endpoint sends every
  # packet back 20 ms later, so the round trip is 20 ms plus the probe's small base.
  - name: webrtc-echo
    kind: webrtc
    url: {whip}
    interval: 1s
"""

_FAULT_EVERY = 30.0
_VOICE = VoiceBehaviour(
    delay=0.25, tool_delay=0.4, answer_seconds=1.0, yield_delay=0.1, session_limit=60.0,
    go_away_lead=5.0,
)  # fmt: skip


def _fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}ms"


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m"


def summary(probes: list[ProbeStatus], out: TextIO) -> None:
    """The live table. p50, p99 and "in SLO" are over the latest replies; counts since start."""
    groups = (
        f"{'':<12} {'session':<10} {f'-- latest {RECENT} replies --':^32} {'-- since start --':^21}"
    )
    header = (
        f"{'probe':<12} {'state':<5} {'age':>4} {'p50':>8} {'p99':>8} {'SLO':>6} {'in SLO':>7} "
        f"{'sent':>6} {'lost':>5} {'reconn':>8}  disconnects"
    )
    lines = [groups, header]
    for p in probes:
        cuts = p.percentiles()
        within = p.within_slo()
        disconnects = " ".join(f"{r}:{n}" for r, n in sorted(p.disconnects.items())) or "-"
        lines.append(
            f"{p.name:<12} {'up' if p.up else 'DOWN':<5} {_fmt_age(p.session_age):>4} "
            f"{_fmt_ms(cuts[0] if cuts else None):>8} {_fmt_ms(cuts[1] if cuts else None):>8} "
            f"{_fmt_ms(p.slo[0] if p.slo else None):>6} "
            f"{'-' if within is None else f'{within:.0%}':>7} "
            f"{p.sent:>6} {p.lost:>5} {_fmt_ms(p.last_reconnect_s):>8}  {disconnects}"
        )
    print("\n".join(lines) + "\n", file=out, flush=True)


async def run_demo(listen: str | None = None, duration: float | None = None) -> int:
    out = sys.stdout
    async with (
        EchoTarget() as fast,
        EchoTarget(delay=0.04, jitter=0.02) as slow,
        EchoTarget() as behind_proxy,
        PubSubTarget(delay=0.01, jitter=0.005, chatter_interval=1.0) as room,
        SttTarget("deepgram", fast=True, delay=0.15, jitter=0.03) as stt,
        VoiceTarget("gemini", behaviour=_VOICE) as voice,
        FaultProxy("127.0.0.1", behind_proxy.port) as proxy,
        contextlib.AsyncExitStack() as stack,
    ):
        text = DEMO_CONFIG.format(
            fast=fast.url,
            slow=slow.url,
            proxied=f"ws://127.0.0.1:{proxy.port}/ws",
            api=f"{fast.control_url}status",
            room=room.url,
            stt=stt.url,
            voice=voice.url,
        )
        if not webrtc_extra_missing():
            from probed.targets.whip import EchoMode, WhipTarget
            from probed.webrtc.loopback import loopback_candidates

            # Both peers on 127.0.0.1: nothing of the demo leaves the machine.
            stack.enter_context(loopback_candidates())
            whip = await stack.enter_async_context(WhipTarget(delay=0.02, mode=EchoMode.REFLECT))
            text += DEMO_WEBRTC.format(whip=whip.url)
        config = parse_config(text, source="<demo>")
        daemon = Daemon(config, listen=listen or DEMO_LISTEN)
        runner = asyncio.create_task(daemon.run())
        ready = asyncio.create_task(daemon.ready.wait())
        await asyncio.wait({runner, ready}, return_when=asyncio.FIRST_COMPLETED)
        if runner.done():
            ready.cancel()
            exc = runner.exception()
            print(
                f"probed demo: cannot start the daemon on {daemon.listen}: {exc}\n"
                "  another probed may be running; try: probed demo --listen 127.0.0.1:0",
                file=sys.stderr,
            )
            return 1
        assert daemon.bound is not None
        host, port = daemon.bound
        print(
            f"probed {__version__} demo: probing reference targets on loopback.\n"
            f"  status:   http://{host}:{port}/  (every probe, recent failures)\n"
            f"  metrics:  http://{host}:{port}/metrics\n"
            f"  config:   (embedded, below)\n\n{text}\n"
            f"Summary every 5 s: p50, p99 and in SLO over the latest {RECENT} replies; age of the\n"
            "current session; sent, lost, disconnects since start; reconn: the latest reconnect\n"
            "took this long (loss detected to usable again).\n"
            "Ctrl-C to stop.\n",
            file=out,
            flush=True,
        )
        faults = asyncio.create_task(_game_day(proxy, out))
        loop = asyncio.get_running_loop()
        end = None if duration is None else loop.time() + duration
        while not runner.done():
            wait = _SUMMARY_EVERY if end is None else min(_SUMMARY_EVERY, end - loop.time())
            if wait <= 0:
                break
            done, _ = await asyncio.wait({runner}, timeout=wait)
            if not done:
                summary([p.status for p in daemon.exposition.probes()], out)
        faults.cancel()
        daemon.stop()
        await runner
    return 0


async def _game_day(proxy: FaultProxy, out: TextIO) -> None:
    """Break echo-faults' network every so often so the reconnect metrics have something to show."""
    while True:
        await asyncio.sleep(_FAULT_EVERY)
        print("demo: fault: TCP reset of echo-faults' connection (reason=reset)\n", file=out)
        proxy.reset()
        await asyncio.sleep(_FAULT_EVERY)
        print("demo: fault: blackhole echo-faults' network for 8 s (reason=stalled)\n", file=out)
        proxy.blackhole()
        await asyncio.sleep(8)
        proxy.heal()
        print("demo: fault healed\n", file=out)
