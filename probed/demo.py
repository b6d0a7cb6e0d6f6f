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
  - name: echo-local
    kind: websocket
    url: {fast}
    interval: 250ms
    timeout: 2s
  - name: echo-slow
    kind: websocket
    url: {slow}               # 40 ms +/- 20 ms server delay: some replies miss the 50 ms SLO
    interval: 250ms
    timeout: 2s
  - name: echo-churn
    kind: websocket
    url: {proxied}            # through a fault-injecting proxy
    interval: 500ms
    timeout: 2s
    connection:
      churn: 20s              # close on purpose every 20 s to measure reconnects
      keepalive: {{interval: 5s, timeout: 2s}}
"""


def _fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}ms"


def _sample(probe: ProbeMetrics, name: str) -> int:
    value = probe.registry.get_sample_value(name)
    return int(value or 0)


def summary(probes: list[ProbeMetrics], slo: dict[str, float], out: TextIO) -> None:
    header = (
        f"{'probe':<12} {'state':<5} {'p50':>8} {'p99':>8} {'SLO':>6} {'in SLO':>7} "
        f"{'sent':>6} {'lost':>5} {'reconnects':>10}"
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
            f"{_sample(p, 'probe_messages_lost_total'):>5} {max(0, p.connects - 1):>10}"
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
            "Summary every 5 s; Ctrl-C to stop.\n",
            file=out,
            flush=True,
        )
        slo = {p.name: p.slo.latency for p in config.probes}
        loop = asyncio.get_running_loop()
        end = None if duration is None else loop.time() + duration
        while not runner.done():
            wait = _SUMMARY_EVERY if end is None else min(_SUMMARY_EVERY, end - loop.time())
            if wait <= 0:
                break
            done, _ = await asyncio.wait({runner}, timeout=wait)
            if not done:
                summary(daemon.exposition.probes(), slo, out)
        daemon.stop()
        await runner
    return 0
