"""`probed demo`: reference targets on loopback, the daemon probing them, a live summary.

Part of the command-line layer: with cli.py, the only place that starts reference targets.
The embedded config is ordinary probed YAML, printed at start so a new user can copy it.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from typing import TextIO

from probed import __version__
from probed.config import parse_config
from probed.daemon import Daemon
from probed.metrics import ProbeMetrics
from probed.targets.echo import EchoTarget
from probed.targets.proxy import FaultProxy

DEMO_LISTEN = "127.0.0.1:9464"
_SUMMARY_EVERY = 5.0
_WINDOW = 100  # summary percentiles cover the latest replies, not the whole run

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
"""

_FAULT_EVERY = 30.0


def _fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}ms"


def _sample(probe: ProbeMetrics, name: str) -> int:
    value = probe.registry.get_sample_value(name)
    return int(value or 0)


def _disconnects(probe: ProbeMetrics) -> str:
    counts = [
        f"{s.labels['reason']}:{int(s.value)}"
        for family in probe.registry.collect()
        if family.name == "probe_disconnects"
        for s in family.samples
        if s.name.endswith("_total") and s.value > 0
    ]
    return " ".join(counts) or "-"


def summary(probes: list[ProbeMetrics], slo: dict[str, float], out: TextIO) -> None:
    header = (
        f"{'probe':<12} {'state':<5} {'p50':>8} {'p99':>8} {'SLO':>6} {'in SLO':>7} "
        f"{'sent':>6} {'lost':>5}  disconnects"
    )
    lines = [header]
    for p in probes:
        recent = list(p.recent_rtt)[-_WINDOW:]
        p50 = p99 = None
        within = "-"
        if len(recent) >= 2:
            cuts = statistics.quantiles(recent, n=100, method="inclusive")
            p50, p99 = cuts[49], cuts[98]
            within = f"{100 * sum(r <= slo[p.name] for r in recent) / len(recent):.0f}%"
        lines.append(
            f"{p.name:<12} {'up' if p.connected else 'DOWN':<5} {_fmt_ms(p50):>8} "
            f"{_fmt_ms(p99):>8} {_fmt_ms(slo[p.name]):>6} {within:>7} "
            f"{_sample(p, 'probe_messages_sent_total'):>6} "
            f"{_sample(p, 'probe_messages_lost_total'):>5}  {_disconnects(p)}"
        )
    print("\n".join(lines) + "\n", file=out, flush=True)


async def run_demo(listen: str | None = None, duration: float | None = None) -> int:
    out = sys.stdout
    async with (
        EchoTarget() as fast,
        EchoTarget(delay=0.04, jitter=0.02) as slow,
        EchoTarget() as behind_proxy,
        FaultProxy("127.0.0.1", behind_proxy.port) as proxy,
    ):
        text = DEMO_CONFIG.format(
            fast=fast.url, slow=slow.url, proxied=f"ws://127.0.0.1:{proxy.port}/ws"
        )
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
            f"  metrics:  http://{host}:{port}/metrics\n"
            f"  config:   (embedded, below)\n\n{text}\n"
            "Summary every 5 s (percentiles over the latest 100 replies); Ctrl-C to stop.\n",
            file=out,
            flush=True,
        )
        slo = {p.name: p.slo.latency for p in config.probes}
        faults = asyncio.create_task(_game_day(proxy, out))
        loop = asyncio.get_running_loop()
        end = None if duration is None else loop.time() + duration
        while not runner.done():
            wait = _SUMMARY_EVERY if end is None else min(_SUMMARY_EVERY, end - loop.time())
            if wait <= 0:
                break
            done, _ = await asyncio.wait({runner}, timeout=wait)
            if not done:
                summary(daemon.exposition.probes(), slo, out)
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
