"""CPU of one /metrics render for N probes' families, without sessions: the exposition alone.

    python -m tests.perf.render_cost --probes 1000

Every probe records one message and one round trip between renders (what a scrape every few
seconds sees at one message a second), so each render re-renders the families that changed and
reuses the rest, as in the daemon.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from probed.exposition import Format
from probed.metrics import DaemonMetrics, Exposition, ProbeMetrics
from probed.probes.messages import MessageMetrics


def main(count: int, renders: int) -> None:
    exposition = Exposition(DaemonMetrics())
    exposition.labels = {"location": "bench"}
    recorders = []
    for i in range(count):
        probe = ProbeMetrics(
            f"p{i:05d}", kind="echo", target="ws://127.0.0.1:1/", slo_thresholds=(0.05,)
        )
        recorders.append(MessageMetrics(probe, probe.latency("probe_message_rtt_seconds", "RTT")))
        probe.session().connected_ok(
            phases={"dns": 0.001, "tcp": 0.001, "upgrade": 0.001, "setup": 0.0},
            total=0.003, reconnect=None, cert_expiry=None,
        )  # fmt: skip
        exposition.add(probe)
    for fmt in Format:
        cpu, size = [], 0
        for _ in range(renders + 2):
            for m in recorders:
                m.sent()
                m.latency.observe(0, int(random.uniform(2e5, 2e6)))
            start = time.thread_time_ns()
            size = len(exposition.render_format(fmt))
            cpu.append((time.thread_time_ns() - start) / 1e6)
        steady = cpu[2:]  # the first renders fill the caches
        print(
            f"{fmt.name:12} {count} probes: median {statistics.median(steady):.1f} ms CPU,"
            f" max {max(steady):.1f} ms, {size / 1e6:.1f} MB"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--renders", type=int, default=5)
    args = parser.parse_args()
    main(args.probes, args.renders)
