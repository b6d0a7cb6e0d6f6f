"""The metric contract: a golden file pins every family's name, type and labels.

Alerts, recording rules and dashboards are written against these names; a change here must come
with a change to them (and to the golden file, deliberately).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from probed.labels import RESERVED_LABEL_NAMES
from probed.targets.echo import EchoTarget
from tests.conftest import RunningDaemon, config, parse_exposition, wait_until

GOLDEN = Path(__file__).parent / "golden" / "echo.txt"
StartDaemon = Callable[..., Awaitable[RunningDaemon]]


def render(families: dict[str, tuple[str, set[str]]]) -> str:
    # Counters are listed by the name they are scraped and queried as.
    return "".join(
        f"{name}{'_total' if kind == 'counter' else ''} {kind} {','.join(sorted(labels))}\n"
        for name, (kind, labels) in sorted(families.items())
    )


async def scrape_after_traffic(echo: EchoTarget, start_daemon: StartDaemon) -> tuple[str, str]:
    text = f"""
global:
  labels: {{location: test-lab}}
probes:
  - name: golden
    kind: echo
    url: {echo.url}
    interval: 50ms
    timeout: 1s
    slo: {{latency: 40ms}}
"""
    d = await start_daemon(config(text))
    await wait_until(lambda: d.count("probe_message_rtt_seconds_count", probe="golden") >= 3)
    echo.close_all(4000, "golden")  # so that close codes and a reconnect have samples
    await wait_until(lambda: d.count("probe_reconnect_duration_seconds_count", probe="golden") >= 1)
    plain = await d.scrape()
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{d.url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        ) as resp,
    ):
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        openmetrics = await resp.text()
    return plain, openmetrics


async def test_golden_exposition(echo: EchoTarget, start_daemon: StartDaemon) -> None:
    plain, openmetrics = await scrape_after_traffic(echo, start_daemon)
    got = render(parse_exposition(plain))
    if os.environ.get("PROBED_UPDATE_GOLDEN"):
        GOLDEN.write_text(got)
    used = set().union(*(labels for _kind, labels in parse_exposition(plain).values()))
    assert used - {"location"} <= RESERVED_LABEL_NAMES, "a new label must be reserved in config"
    assert got == GOLDEN.read_text(), (
        "the metric contract changed: update alerts, dashboards and README with it, then"
        " rerun with PROBED_UPDATE_GOLDEN=1"
    )
    assert openmetrics.rstrip().endswith("# EOF")


async def test_slo_thresholds_are_bucket_boundaries(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    plain, _ = await scrape_after_traffic(echo, start_daemon)
    les = {
        line.split('le="')[1].split('"')[0]
        for line in plain.splitlines()
        if line.startswith("probe_message_rtt_seconds_bucket")
    }
    # The product SLOs, and this probe's own 40 ms threshold.
    assert {"0.05", "0.2", "0.5", "1.0", "0.04"} <= les


@pytest.mark.e2e
async def test_promtool_accepts_the_exposition(echo: EchoTarget, start_daemon: StartDaemon) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not installed: run the README test command (tests/run.sh)")
    plain, _ = await scrape_after_traffic(echo, start_daemon)
    proc = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(plain.encode())
    # promtool prints lint findings (naming, units, help) and exits non-zero on any of them.
    assert proc.returncode == 0 and not out.strip(), out.decode()
