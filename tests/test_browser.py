"""The status page in a real headless browser (Debian's chromium over the DevTools protocol)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from probed.targets.echo import EchoTarget
from tests.cdp import chromium, chromium_path
from tests.conftest import RunningDaemon, config, wait_until

StartDaemon = Callable[..., Awaitable[RunningDaemon]]
ARTIFACTS = Path(__file__).parent / "artifacts"
HOSTILE = "<img src=x onerror=alert(1)>bye"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        chromium_path() is None,
        reason="chromium is not installed (bash tests/run.sh installs it when run as root)",
    ),
]


@pytest.fixture
async def rude_server() -> AsyncIterator[str]:
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(4003, HOSTILE)

    async with serve(handler, "127.0.0.1", 0) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/chat"


async def test_status_page_in_a_browser_marks_the_failing_probe(
    tmp_path: Path, echo: EchoTarget, rude_server: str, start_daemon: StartDaemon
) -> None:
    d = await start_daemon(
        config(
            "probes:\n"
            f"  - {{name: chat-echo, kind: echo, url: '{echo.url}', interval: 50ms, timeout: 1s}}\n"
            f"  - name: chat-rejects\n    kind: echo\n    url: '{rude_server}'\n"
            "    interval: 50ms\n    timeout: 1s\n"
            "    connection: {reconnect: {initial: 50ms, max: 200ms}}\n"
        )
    )
    statuses = {p.name: p.status for p in d.daemon.exposition.probes()}
    await wait_until(
        lambda: (
            len(statuses["chat-echo"].recent) >= 5
            and statuses["chat-rejects"].disconnects["server_close"] >= 2
        ),
        what="replies on one probe and closes on the other",
    )

    async with chromium(tmp_path / "profile") as browser:
        await browser.open(f"{d.url}/", width=412, height=915)
        cards = await browser.evaluate(
            "Array.from(document.querySelectorAll('section.probe'))"
            ".map(e => [e.dataset.probe, e.dataset.state,"
            " getComputedStyle(e.querySelector('.state')).backgroundColor])"
        )
        text = await browser.evaluate("document.body.innerText")
        injected = await browser.evaluate("document.querySelectorAll('img, script').length")
        overflow = await browser.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        title = await browser.evaluate("document.title")
        shot = await browser.screenshot(ARTIFACTS / "status-page.png")
    print(f"\nstatus page screenshot: {shot}")

    states = {name: state for name, state, _colour in cards}
    assert states == {"chat-echo": "ok", "chat-rejects": "failing"}
    colours = {name: colour for name, _state, colour in cards}
    assert colours["chat-echo"] != colours["chat-rejects"]  # not told apart by text alone
    assert title.startswith("FAILING")
    # The close reason is shown as text; the markup in it never became an element.
    assert HOSTILE in text and injected == 0
    assert "close 4003" in text and "server_close" in text
    assert "p50" in text and "SLO 50.0 ms" in text
    assert overflow <= 0, "the page scrolls sideways on a phone-sized screen"
    assert shot.stat().st_size > 5_000
