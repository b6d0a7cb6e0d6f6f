"""A `probed run` in a real process, read through its log lines and its HTTP face."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import bound

PROTOBUF = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def echo_config(port: int, names: list[str], labels: str = "{location: test}") -> str:
    lines = ["global:", "  listen: 127.0.0.1:0", f"  labels: {labels}", "probes:"]
    for name in names:
        lines += [
            f"  - name: {name}",
            "    kind: echo",
            f"    url: ws://127.0.0.1:{port}/",
            "    interval: 200ms",
            "    start_stagger: 100ms",
        ]
    return "\n".join(lines) + "\n"


class Running:
    """A `probed run` process: its log lines as they come, its URL, its workers' pids."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.url = ""
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))
                self._changed.set()

    def logged(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [
            line
            for line in self.lines
            if line.get("event") == event and all(line.get(k) == v for k, v in fields.items())
        ]

    async def wait_log(self, event: str, count: int = 1, within: float = 30, **fields: Any) -> None:
        async def wait() -> None:
            while len(self.logged(event, **fields)) < count:
                if self._reader.done():
                    raise AssertionError(f"probed exited before logging {event!r}")
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), bound(within))

    def children(self) -> list[int]:
        found = []
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            found += [int(p) for p in (task / "children").read_text().split()]
        return found

    async def get(self, path: str, accept: str = "*/*") -> tuple[int, str, bytes]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(self.url + path, headers={"Accept": accept}) as resp,
        ):
            return resp.status, resp.headers.get("Content-Type", ""), await resp.read()

    async def scrape(self, accept: str = "text/plain") -> bytes:
        status, _type, body = await self.get("/metrics", accept)
        assert status == 200
        return body

    async def wait_for(self, check: Callable[[], Any], what: str, within: float = 30) -> None:
        """Await `check()` (a coroutine returning truth) until it holds."""
        deadline = asyncio.get_running_loop().time() + bound(within)
        while not await check():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def probed_run(config: Path, *args: str) -> AsyncIterator[Running]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "probed", "--log-format", "json", "run", "-c", str(config),
        "--listen", "127.0.0.1:0", *args,
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    running = Running(proc)
    try:
        await running.wait_log("probed started", component="daemon")
        started = running.logged("probed started", component="daemon")[0]
        running.url = started["listen"]
        yield running
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), bound(20))
            except TimeoutError:
                proc.kill()
                await proc.wait()
        running._reader.cancel()
