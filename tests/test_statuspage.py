"""The status page and the JSON API, on a real daemon, and the history behind them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from websockets.asyncio.server import ServerConnection, serve

from probed.status import (
    HistoryLimits,
    ProbeStatus,
    Recent,
    history_limits,
    set_history_limits,
)
from probed.statuspage import NO_PROBES, PAGE_CYCLES, PAGE_DETAILED, page_html
from probed.targets.echo import EchoTarget
from tests.conftest import RunningDaemon, config, wait_until

StartDaemon = Callable[..., Awaitable[RunningDaemon]]
HOSTILE = '<script>alert("x")</script>'


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


async def get_json(url: str) -> tuple[int, object]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json()


@pytest.fixture
async def rude_server() -> AsyncIterator[str]:
    """Accepts, reads one message and closes with 4001 and a reason full of HTML."""

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(4001, HOSTILE)

    async with serve(handler, "127.0.0.1", 0) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


def two_probes(good: str, bad: str) -> str:
    return (
        "probes:\n"
        f"  - {{name: healthy, kind: echo, url: '{good}', interval: 50ms, timeout: 1s}}\n"
        f"  - name: failing\n    kind: echo\n    url: '{bad}'\n    interval: 50ms\n"
        "    timeout: 1s\n    connection: {reconnect: {initial: 50ms, max: 100ms}}\n"
    )


async def test_page_and_api_show_the_healthy_and_the_failing_probe(
    echo: EchoTarget, rude_server: str, start_daemon: StartDaemon
) -> None:
    d = await start_daemon(config(two_probes(echo.url, rude_server)))
    statuses = {p.name: p.status for p in d.daemon.exposition.probes()}
    await wait_until(
        lambda: (
            len(statuses["healthy"].recent) >= 3
            and statuses["failing"].disconnects["server_close"] >= 2
        ),
        what="replies on one probe, closes on the other",
    )
    status, body = await get(f"{d.url}/")
    assert status == 200
    assert 'data-probe="healthy" data-state="ok"' in body
    assert 'data-probe="failing" data-state="failing"' in body
    # The close reason came from the network: shown, but only ever as text.
    assert HOSTILE not in body
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in body
    assert "close 4001" in body
    assert "<title>FAILING probed" in body
    # The failing probe comes first: that is what the person opened the page for.
    assert body.index('data-probe="failing"') < body.index('data-probe="healthy"')

    status, brief = await get_json(f"{d.url}/api/v1/probes")
    assert status == 200 and isinstance(brief, dict)
    assert [p["name"] for p in brief["probes"]] == ["failing", "healthy"]
    assert not any("cycles" in p for p in brief["probes"])  # timelines only when asked
    status, api = await get_json(f"{d.url}/api/v1/probes?history=1")
    assert status == 200 and isinstance(api, dict)
    by_name = {p["name"]: p for p in api["probes"]}
    assert by_name["healthy"]["state"] == "ok" and by_name["healthy"]["p50_s"] is not None
    assert by_name["healthy"]["kind"] == "echo" and by_name["healthy"]["target"] == echo.url
    failing = by_name["failing"]
    assert failing["state"] == "failing"
    assert failing["disconnects"]["server_close"] >= 2
    ended = [c for c in failing["cycles"] if c["ended"] is not None]
    assert ended and ended[0]["close_code"] == 4001 and ended[0]["close_reason"] == HOSTILE
    assert not ended[0]["ok"] and ended[0]["phases_s"].keys() >= {"tcp", "upgrade"}
    # The message the server read before closing: lost, and the timeline says why.
    assert any(
        s["what"] == "lost" and s["detail"].endswith("in flight when the session ended")
        for s in ended[0]["steps"]
    )
    assert api["warnings"] == [] and api["configured"] == 2

    status, one = await get_json(f"{d.url}/api/v1/probes/healthy")
    assert status == 200 and isinstance(one, dict) and one["name"] == "healthy"
    steps = [s for c in one["cycles"] for s in c["steps"]]
    assert any(s["what"] == "reply" and s["latency_s"] > 0 for s in steps)
    status, page = await get(f"{d.url}/?probe=healthy")
    assert status == 200 and 'data-probe="healthy"' in page and 'data-probe="failing"' not in page
    status, missing = await get_json(f"{d.url}/api/v1/probes/nope")
    assert status == 404 and isinstance(missing, dict) and missing["error"] == "no such probe"


async def test_a_config_without_probes_says_so(start_daemon: StartDaemon) -> None:
    d = await start_daemon(config("global: {}\n"))
    status, body = await get(f"{d.url}/")
    assert status == 200 and 'id="no-probes"' in body and "has no probes" in body
    status, api = await get_json(f"{d.url}/api/v1/probes")
    assert isinstance(api, dict) and api["warnings"] == [NO_PROBES] and api["probes"] == []


KEPT_OK_CYCLES = history_limits().ok_cycles
KEPT_FAILED_CYCLES = history_limits().failed_cycles
KEPT_OK_STEPS = history_limits().ok_steps


def test_failures_are_kept_longer_than_successes() -> None:
    status = ProbeStatus("p", "echo", "ws://x/")
    status.session_up({"tcp": 0.001})
    status.failed("lost", "1 message(s) unanswered")
    for seq in range(KEPT_OK_STEPS * 3):
        status.measured("reply", 0.002, f"seq {seq}")
    status.session_down("reset", None, "", failure=True)
    for _ in range(KEPT_OK_CYCLES * 4):
        status.session_up({"tcp": 0.001})
        status.measured("reply", 0.002)
        status.session_down("churn", None, "", failure=False)
    cycles = status.cycles()
    assert sum(c.ok for c in cycles) == KEPT_OK_CYCLES
    (failed,) = [c for c in cycles if not c.ok]
    # Thirty replies later, the one lost message is still in that session's timeline.
    whats = [s.what for s in failed.steps]
    assert whats[:2] == ["connected", "lost"] and whats[-1] == "session ended: reset"
    assert whats.count("reply") == KEPT_OK_STEPS
    assert failed.measured == KEPT_OK_STEPS * 3

    for _ in range(KEPT_FAILED_CYCLES + 5):
        status.connect_failed("refused", "tcp: connection refused")
    assert sum(not c.ok for c in status.cycles()) == KEPT_FAILED_CYCLES
    assert sum(c.ok for c in status.cycles()) == KEPT_OK_CYCLES


def test_many_probes_keep_shorter_histories_within_one_budget() -> None:
    full = HistoryLimits()
    assert HistoryLimits.for_probes(1) == full
    assert HistoryLimits.for_probes(100) == full
    for probes in (1_000, 10_000):
        limits = HistoryLimits.for_probes(probes)
        assert limits.failed_cycles < full.failed_cycles and limits.failed_steps < full.failed_steps
        # Within the budget (or at the floor: the latest failure and a few of its steps).
        assert probes * limits.steps_per_probe <= 200_000 or limits.failed_cycles == 1
    set_history_limits(HistoryLimits.for_probes(10_000))
    try:
        status = ProbeStatus("p", "echo", "ws://x/")
        for _ in range(10):
            status.session_up({"tcp": 0.001})
            for seq in range(50):
                status.measured("reply", 0.002, f"seq {seq}")
                status.failed("lost", f"seq {seq}")
            status.session_down("reset", None, "", failure=True)
        kept = status.cycles()
        assert len(kept) == history_limits().failed_cycles
        assert sum(len(c.steps) for c in kept) <= history_limits().steps_per_probe
    finally:
        set_history_limits(HistoryLimits())


def test_page_escapes_what_came_from_the_network() -> None:
    status = ProbeStatus("p", "echo", "ws://x/")
    status.session_up({"tcp": 0.001})
    status.session_down("server_close", 4001, HOSTILE, failure=True)
    status.error("connect failed", "protocol_error", f"upgrade: {HOSTILE}")
    status.success = False
    page = page_html([status], configured=1)
    assert "<script" not in page
    assert page.count("&lt;script&gt;") == 3  # last error, last close... and the timeline


def test_page_shows_a_few_cycles_per_probe_failures_first_and_links_the_rest() -> None:
    status = ProbeStatus("p", "echo", "ws://x/")
    for _ in range(3):  # the failures that paged
        status.connect_failed("refused", "tcp: connection refused")
    for _ in range(KEPT_OK_CYCLES):
        status.session_up({"tcp": 0.001})
        status.session_down("churn", None, "", failure=False)
    status.session_up({"tcp": 0.001})  # the session open now
    page = page_html([status], configured=1)
    assert page.count('<div class="cycle') == PAGE_CYCLES
    assert "connect failed at" in page and "session open since" in page
    assert f'href="/api/v1/probes/p">all {KEPT_OK_CYCLES + 4} kept cycles' in page


def test_with_many_probes_only_the_first_few_carry_timelines() -> None:
    statuses = []
    for i in range(PAGE_DETAILED + 5):
        status = ProbeStatus(f"p{i:02}", "echo", "ws://x/")
        status.connect_failed("refused", "tcp")
        status.success = i % 2 == 0  # odd ones are failing, and come first
        statuses.append(status)
    page = page_html(statuses, configured=len(statuses))
    assert page.count("<details") == PAGE_DETAILED
    assert page.count('<a href="/?probe=') == 5
    assert page.index('data-probe="p01"') < page.index('data-probe="p00"')
    one = page_html(statuses, configured=len(statuses), only="p24")
    assert one.count("<section") == 1 and "<details" in one


def test_a_sessionless_kind_shows_each_check_as_a_cycle() -> None:
    status = ProbeStatus("api", "http", "http://x/", sessionless=True)
    status.checked(True, "response 200", "connect 1.0ms", latency_s=0.004, phases={"connect": 1e-3})
    status.checked(False, "request failed: status", f"status 503 {HOSTILE}")
    status.success = False
    first, second = status.cycles()
    assert (first.what, first.ok, second.what, second.ok) == ("check", False, "check", True)
    assert second.steps[0].offset_s >= 0.004  # the cycle began when the request left
    page = page_html([status], configured=1)
    assert "check at" in page and "request failed: status" in page and "<script" not in page
    assert "2 made, 1 failed (no held session)" in page and " connects<" not in page
    assert [c["what"] for c in status.as_dict()["cycles"]] == ["check", "check"]


def test_sessions_sharing_a_role_keep_cycles_of_their_own() -> None:
    status = ProbeStatus("room", "fanout", "ws://x/")
    status.session_up({"tcp": 0.001}, "subscriber", key="subscriber#1")
    status.session_up({"tcp": 0.001}, "subscriber", key="subscriber#2")
    status.session_down("reset", None, "", failure=True, key="subscriber#1")
    live, ended = status.cycles()
    assert (live.ended, live.role) == (None, "subscriber")
    assert (ended.end_reason, ended.role, ended.ok) == ("reset", "subscriber", False)
    status.session_down("churn", None, "", failure=False, key="subscriber#2")
    assert not status.current and len(status.cycles()) == 2


def test_recent_latencies_keep_the_latest_in_order() -> None:
    recent = Recent(size=3)
    assert recent.latest() is None and list(recent) == [] and len(recent) == 0
    for value in (1.0, 2.0):
        recent.append(value)
    assert list(recent) == [1.0, 2.0] and recent.latest() == 2.0
    for value in (3.0, 4.0, 5.0):
        recent.append(value)
    assert list(recent) == [3.0, 4.0, 5.0] and recent.latest() == 5.0 and len(recent) == 3
    recent.clear()
    assert list(recent) == [] and recent.latest() is None
    recent.append(6.0)
    assert list(recent) == [6.0]
