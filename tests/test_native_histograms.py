"""Exact percentiles: Debian's Prometheus scrapes native histograms over the protobuf exposition.

Three probes against echo servers that delay every reply by 5, 40 and 200 ms. Every RTT the
probes record is also kept aside (a tap on the histogram, below the recorder), so the exact
quantiles are known; PromQL's `histogram_quantile` over the native series must land within 5% of
them, where the classic SLO buckets (interpolated the same way) are off by up to 25%.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from probed import series
from probed.series import HistogramChild
from probed.targets.echo import EchoTarget
from tests.conftest import RunningDaemon, bound, config, wait_until

StartDaemon = Callable[..., Awaitable[RunningDaemon]]
DELAYS = {"d5": 0.005, "d40": 0.04, "d200": 0.2}
QUANTILES = (0.5, 0.9, 0.99)
SAMPLES = 300


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def classic_estimate(buckets: list[tuple[float, float]], q: float) -> float:
    """histogram_quantile over classic buckets: linear inside the bucket holding the rank."""
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower_bound
            return lower_bound + (upper - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = upper, count
    return lower_bound


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def prometheus(tmp: Path, target: str) -> AsyncIterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not installed: run the README test command (tests/run.sh)")
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 500ms, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: probed\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--enable-feature=native-histograms",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(int(bound(200))):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{url}/-/ready") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        await proc.wait()


async def query(url: str, promql: str) -> float | None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/api/v1/query", params={"query": promql}) as resp,
    ):
        result = (await resp.json())["data"]["result"]
    return float(result[0]["value"][1]) if result else None


@pytest.mark.e2e
async def test_native_histogram_percentiles_are_exact_to_5_percent(
    start_daemon: StartDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tap: every value any histogram records, by histogram (probes are matched up below).
    recorded: dict[int, list[float]] = defaultdict(list)
    observe = HistogramChild.observe

    def tapped(self: HistogramChild, value: float) -> None:
        recorded[id(self)].append(value)
        observe(self, value)

    monkeypatch.setattr(series.HistogramChild, "observe", tapped)
    async with contextlib.AsyncExitStack() as stack:
        targets = {
            name: await stack.enter_async_context(EchoTarget(delay=delay))
            for name, delay in DELAYS.items()
        }
        probes = "".join(
            f"  - {{name: {name}, kind: echo, url: '{t.url}', interval: 10ms, timeout: 1s,"
            " slo: {latency: 500ms}}\n"
            for name, t in targets.items()
        )
        # A generous threshold: this test is about bucket resolution, not the loaded machine.
        d = await start_daemon(config(f"global: {{loop_lag_threshold: 1s}}\nprobes:\n{probes}"))
        assert d.daemon.bound is not None
        host, port = d.daemon.bound
        prom = await stack.enter_async_context(prometheus(tmp_path, f"{host}:{port}"))

        def rtt_child(name: str) -> HistogramChild:
            (p,) = [p for p in d.daemon.exposition.probes() if p.name == name]
            (family,) = [f for f in p.registry.families if f.name == "probe_message_rtt_seconds"]
            assert isinstance(family, series.Histogram)
            return family.labels()

        await wait_until(
            lambda: all(rtt_child(n).count >= SAMPLES for n in DELAYS), within=30, what="samples"
        )
        for t in targets.values():
            t.set_echo(False)  # no more measurements: Prometheus can catch up exactly
        for name in DELAYS:
            for _ in range(int(bound(200))):
                # Read again each time: a reply already on its way when the echo stopped still
                # lands after it.
                want = rtt_child(name).count
                got = await query(
                    prom, f'histogram_count(probe_message_rtt_seconds{{probe="{name}"}})'
                )
                if got == want:
                    break
                await asyncio.sleep(0.05)
            assert got == want, f"{name}: Prometheus has {got} native observations of {want}"

        report = []
        worst_classic = 0.0
        for name in DELAYS:
            child = rtt_child(name)
            values = recorded[id(child)]
            assert len(values) == child.count
            bounds = [*child._family.bounds, math.inf]
            cumulative = [float(c) for c in child.cumulative()]
            for q in QUANTILES:
                truth = exact(values, q)
                native = await query(
                    prom, f'histogram_quantile({q}, probe_message_rtt_seconds{{probe="{name}"}})'
                )
                assert native is not None
                classic = classic_estimate(list(zip(bounds, cumulative, strict=True)), q)
                native_err = abs(native - truth) / truth
                classic_err = abs(classic - truth) / truth
                worst_classic = max(worst_classic, classic_err)
                report.append(
                    f"{name} p{round(q * 100)}: truth {truth * 1e3:.2f} ms,"
                    f" native {native * 1e3:.2f} ({native_err:.1%}),"
                    f" classic {classic * 1e3:.2f} ({classic_err:.1%})"
                )
                assert native_err <= 0.05, "\n".join(report)
        print("\n".join(report))
        # The point of it: the classic SLO buckets cannot say this (200 ms lands mid 200-300 ms).
        assert worst_classic > 0.1, "\n".join(report)
