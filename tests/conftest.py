"""Shared test helpers: real servers on port 0, event-driven waits, one scalable timing unit."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from probed import logs
from probed.config import Config, parse_config
from probed.daemon import Daemon
from probed.targets.echo import EchoTarget

# One timing unit for every generous bound in the suite; raise it on a slow or loaded machine.
SCALE = float(os.environ.get("PROBED_TEST_TIME_SCALE", "1"))


def bound(seconds: float) -> float:
    return seconds * SCALE


async def wait_until(
    predicate: Callable[[], object], within: float = 10.0, what: str = "condition"
) -> None:
    """Poll a cheap predicate until it holds; fail with `what` after a generous bound."""
    deadline = time.monotonic() + bound(within)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {bound(within)}s waiting for {what}")
        await asyncio.sleep(0.01)


def config(yaml_text: str) -> Config:
    return parse_config(yaml_text, source="<test>")


class RunningDaemon:
    def __init__(self, daemon: Daemon, task: asyncio.Task[None]) -> None:
        self.daemon = daemon
        self.task = task

    @property
    def url(self) -> str:
        assert self.daemon.bound is not None
        host, port = self.daemon.bound
        return f"http://{host}:{port}"

    async def scrape(self) -> str:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()

    def value(self, name: str, **labels: str) -> float | None:
        """A sample straight from the exposition collector, without HTTP."""
        for family in self.daemon.exposition.collect():
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None

    def count(self, name: str, **labels: str) -> float:
        return self.value(name, **labels) or 0.0


def parse_exposition(text: str) -> dict[str, tuple[str, set[str]]]:
    """family name -> (type, label names seen on its samples, le/quantile excluded)."""
    out: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        names: set[str] = set()
        for sample in family.samples:
            names.update(k for k in sample.labels if k not in ("le", "quantile"))
        out[family.name] = (family.type, names)
    return out


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    logs.configure("warning", json=True)


@pytest.fixture
async def echo() -> AsyncIterator[EchoTarget]:
    async with EchoTarget() as target:
        yield target


@pytest.fixture
async def start_daemon() -> AsyncIterator[Callable[..., object]]:
    running: list[RunningDaemon] = []

    async def start(cfg: Config, path: Path | None = None, **options: Any) -> RunningDaemon:
        daemon = Daemon(cfg, config_path=path, listen="127.0.0.1:0", **options)
        task = asyncio.create_task(daemon.run(handle_signals=False))
        await wait_until(lambda: daemon.ready.is_set() or task.done(), what="daemon ready")
        if task.done():
            task.result()
        handle = RunningDaemon(daemon, task)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        handle.daemon.stop()
        await asyncio.wait_for(handle.task, bound(10))
