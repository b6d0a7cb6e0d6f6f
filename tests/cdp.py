"""A small Chrome DevTools Protocol client: headless Debian chromium driven over its WebSocket.

Enough for the status-page test (open a page, evaluate JavaScript, take a screenshot) without a
browser-downloading test framework: the browser is Debian's chromium package.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import bound, wait_until

# Headless, no sandbox (tests run as root in CI), and nothing that talks to the internet.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class CdpError(Exception):
    pass


class Browser:
    """One browser connection; `session` names the attached page for page-level commands."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self._ws:
            message = json.loads(raw)
            future = self._pending.pop(message.get("id", -1), None)
            if future is None:
                self.events.append(message)
            elif "error" in message:
                future.set_exception(CdpError(message["error"]))
            else:
                future.set_result(message.get("result", {}))

    async def call(self, method: str, page: bool = True, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if page and self.session is not None:
            message["sessionId"] = self.session
        future = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self._ws.send(json.dumps(message))
        return await asyncio.wait_for(future, bound(30))

    async def wait_event(self, method: str, since: int = 0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events[since:] if e.get("method") == method), None)

        await wait_until(found, within=30, what=f"CDP event {method}")
        event = found()
        assert event is not None
        return event

    async def open(self, url: str, width: int, height: int) -> None:
        """A new page of the given (phone-like) size, attached, with `url` loaded."""
        target = await self.call("Target.createTarget", page=False, url="about:blank")
        attached = await self.call(
            "Target.attachToTarget", page=False, targetId=target["targetId"], flatten=True
        )
        self.session = attached["sessionId"]
        await self.call("Page.enable")
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=True,
        )
        mark = len(self.events)
        await self.call("Page.navigate", url=url)
        await self.wait_event("Page.loadEventFired", mark)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise CdpError(result["exceptionDetails"])
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> Path:
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        data = base64.b64decode(shot["data"])
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(path.write_bytes, data)
        return path

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.call("Browser.close", page=False)
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Browser]:
    """Start headless chromium with a fresh profile and connect to its DevTools endpoint."""
    binary = chromium_path()
    assert binary is not None
    proc = await asyncio.create_subprocess_exec(
        binary,
        *FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    # With port 0 chromium picks a free port and writes it, and the browser's path, here.
    active = profile / "DevToolsActivePort"

    def ready() -> bool:
        written = active.exists() and len(active.read_text().split()) >= 2
        return written or proc.returncode is not None

    try:
        await wait_until(ready, within=60, what="chromium's DevToolsActivePort")
        assert proc.returncode is None, f"chromium exited with {proc.returncode}"
        port, path = active.read_text().split()[:2]
        async with connect(f"ws://127.0.0.1:{port}{path}", max_size=64 * 2**20) as ws:
            browser = Browser(ws)
            try:
                yield browser
            finally:
                await browser.close()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), bound(5))
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
