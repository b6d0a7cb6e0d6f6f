"""Conventions an SRE already knows: exporter flag names and process_* metrics."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable

from probed.cli import build_parser
from probed.targets.echo import EchoTarget
from tests.conftest import RunningDaemon, config


def test_exporter_flag_names_mean_the_same_as_the_short_ones() -> None:
    parser = build_parser()
    long = parser.parse_args(
        [
            "--log.format=json",
            "run",
            "--config.file=/etc/probed/probed.yaml",
            "--web.listen-address=:9464",
            "--log.level=debug",
            "--shard=probed-1/3",
            "--shard-replicas=2",
        ]
    )
    short = parser.parse_args(
        [
            "--log-format=json",
            "run",
            "-c",
            "/etc/probed/probed.yaml",
            "--listen=:9464",
            "--log-level=debug",
            "--shard=probed-1/3",
            "--shard-replicas=2",
        ]
    )
    assert vars(long) == vars(short)
    assert long.config == "/etc/probed/probed.yaml" and long.listen == ":9464"
    for command in ("check", "once"):
        assert parser.parse_args([command, "--config.file", "x.yaml"]).config == "x.yaml"


async def test_process_metrics_describe_this_process(
    echo: EchoTarget, start_daemon: Callable[..., Awaitable[RunningDaemon]]
) -> None:
    d = await start_daemon(config(f"probes:\n  - {{name: a, kind: echo, url: '{echo.url}'}}\n"))
    rss = d.value("process_resident_memory_bytes")
    fds = d.value("process_open_fds")
    max_fds = d.value("process_max_fds")
    start = d.value("process_start_time_seconds")
    cpu = d.value("process_cpu_seconds_total")
    assert rss is not None and rss > 10 * 2**20  # a Python process with aiohttp loaded
    assert fds is not None and max_fds is not None and 3 <= fds < max_fds
    # The same process: its descriptor count matches ours, give or take a few opened meanwhile.
    assert abs(fds - len(os.listdir("/proc/self/fd"))) < 10
    assert start is not None and start <= time.time()
    assert cpu is not None and cpu > 0
    # One set for the daemon, not one per probe registry.
    scraped = await d.scrape()
    assert scraped.count("\nprocess_resident_memory_bytes") == 1
