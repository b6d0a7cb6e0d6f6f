"""The echo probe against the real reference target and small real servers that misbehave."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve

from probed.targets.echo import EchoTarget
from tests.conftest import RunningDaemon, bound, config, wait_until

StartDaemon = Callable[..., Awaitable[RunningDaemon]]


def probe_yaml(url: str, extra: str = "", name: str = "p") -> str:
    return f"""
probes:
  - name: {name}
    kind: echo
    url: {url}
    interval: 50ms
    timeout: 1s
{extra}
"""


async def test_round_trip_is_measured(echo: EchoTarget, start_daemon: StartDaemon) -> None:
    d = await start_daemon(config(probe_yaml(echo.url)))
    await wait_until(
        lambda: d.count("probe_message_rtt_seconds_count", probe="p") >= 5, what="5 rtts"
    )
    assert d.value("probe_success", probe="p") == 1
    assert d.value("probe_connections_open", probe="p") == 1
    assert d.count("probe_messages_lost_total", probe="p") == 0
    sent = d.count("probe_messages_sent_total", probe="p")
    received = d.count("probe_messages_received_total", probe="p")
    assert 0 < received <= sent


async def test_server_delay_shows_in_rtt(start_daemon: StartDaemon) -> None:
    async with EchoTarget(delay=0.06) as slow:
        d = await start_daemon(config(probe_yaml(slow.url)))
        await wait_until(lambda: d.count("probe_message_rtt_seconds_count", probe="p") >= 3)
        # Every reply took at least the server's delay: none may land in the 50 ms bucket.
        assert d.count("probe_message_rtt_seconds_bucket", probe="p", le="0.05") == 0
        total = d.count("probe_message_rtt_seconds_count", probe="p")
        assert d.count("probe_message_rtt_seconds_sum", probe="p") >= 0.06 * total


async def test_unanswered_messages_are_lost_not_silent(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    d = await start_daemon(config(probe_yaml(echo.url).replace("timeout: 1s", "timeout: 200ms")))
    await wait_until(lambda: d.count("probe_messages_received_total", probe="p") >= 2)
    echo.set_echo(False)
    await wait_until(lambda: d.count("probe_messages_lost_total", probe="p") >= 3, what="losses")
    assert d.value("probe_success", probe="p") == 0
    # The session itself stayed up: pings are still answered.
    assert d.value("probe_connections_open", probe="p") == 1
    echo.heal()
    await wait_until(lambda: d.value("probe_success", probe="p") == 1, what="recovery")


async def test_jitter_reorders_and_reordering_is_counted(start_daemon: StartDaemon) -> None:
    async with EchoTarget(delay=0.1, jitter=0.09) as jittery:
        d = await start_daemon(config(probe_yaml(jittery.url).replace("50ms", "10ms")))
        await wait_until(
            lambda: d.count("probe_messages_reordered_total", probe="p") >= 1,
            within=20,
            what="a reordered reply",
        )
        assert d.count("probe_messages_lost_total", probe="p") == 0


@pytest.fixture
async def misbehaving() -> AsyncIterator[Callable[[str], str]]:
    """A real WebSocket server whose reply behaviour is chosen per connection path."""

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        mode = ws.request.path.strip("/")
        async for message in ws:
            if mode == "twice":
                await ws.send(message)
                await ws.send(message)
            elif mode == "garbage":
                await ws.send("<html>not json</html>")
                await ws.send(json.dumps({"no_id": True}))
                await ws.send(message)
            elif mode == "stranger":
                await ws.send(json.dumps({"id": "somebody-else-1"}))
                await ws.send(message)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield lambda mode: f"ws://127.0.0.1:{port}/{mode}"


async def test_duplicates_are_counted(
    misbehaving: Callable[[str], str], start_daemon: StartDaemon
) -> None:
    d = await start_daemon(config(probe_yaml(misbehaving("twice"))))
    await wait_until(lambda: d.count("probe_messages_duplicated_total", probe="p") >= 3)
    assert d.count("probe_messages_lost_total", probe="p") == 0


async def test_replies_that_match_nothing_are_classified(
    misbehaving: Callable[[str], str], start_daemon: StartDaemon
) -> None:
    d = await start_daemon(
        config(
            probe_yaml(misbehaving("garbage"), name="g")
            + probe_yaml(misbehaving("stranger"), name="s").replace("probes:\n", "")
        )
    )
    await wait_until(lambda: d.count("probe_messages_received_total", probe="g") >= 3)
    await wait_until(lambda: d.count("probe_messages_received_total", probe="s") >= 3)
    assert d.count("probe_messages_unmatched_total", probe="g", reason="not_json") >= 3
    assert d.count("probe_messages_unmatched_total", probe="g", reason="missing_field") >= 3
    assert d.count("probe_messages_unmatched_total", probe="s", reason="unknown") >= 3
    # Hostile replies never end the session or crash the probe.
    assert d.count("probed_probe_restarts_total", probe="g") == 0
    assert d.value("probe_connections_open", probe="g") == 1


async def test_raw_matching(echo: EchoTarget, start_daemon: StartDaemon) -> None:
    extra = """    message:
      template: "hello {seq}"
      match: {raw: true}
"""
    d = await start_daemon(config(probe_yaml(echo.url, extra)))
    await wait_until(lambda: d.count("probe_messages_received_total", probe="p") >= 3)
    assert d.count("probe_messages_unmatched_total", probe="p", reason="unknown") == 0


async def test_open_loop_keeps_sending_while_replies_stall(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    d = await start_daemon(config(probe_yaml(echo.url)))
    await wait_until(lambda: d.count("probe_messages_received_total", probe="p") >= 1)
    echo.set_echo(False)
    before = d.count("probe_messages_sent_total", probe="p")
    started = time.monotonic()
    await wait_until(lambda: d.count("probe_messages_sent_total", probe="p") >= before + 5)
    # Sends went on without replies: the schedule does not wait for the server.
    assert time.monotonic() - started < bound(5)
    assert d.count("probe_messages_received_total", probe="p") >= 1


async def test_loop_lag_taints_instead_of_polluting_histograms(
    start_daemon: StartDaemon,
) -> None:
    # Replies take 100 ms and leave every 50 ms: a message is always in flight during a stall.
    async with EchoTarget(delay=0.1) as slow:
        text = probe_yaml(slow.url).replace(
            "probes:", "global: {loop_lag_threshold: 20ms}\nprobes:"
        )
        d = await start_daemon(config(text))
        await wait_until(lambda: d.count("probe_message_rtt_seconds_count", probe="p") >= 2)
        for _ in range(3):
            time.sleep(0.3)  # noqa: ASYNC251 - starve the loop on purpose
            await asyncio.sleep(0.2)
        await wait_until(
            lambda: d.count("probe_measurements_tainted_total", probe="p") >= 1, what="taint"
        )
        # No measurement taken across a 300 ms stall may have reached the histogram.
        observed = d.count("probe_message_rtt_seconds_count", probe="p")
        assert d.count("probe_message_rtt_seconds_bucket", probe="p", le="0.2") == observed
        lag_count = d.count("probed_event_loop_lag_seconds_count")
        assert lag_count > 0
        assert d.count("probed_event_loop_lag_seconds_bucket", le="0.1") < lag_count


async def test_a_reply_after_the_timeout_is_lost_never_a_latency(
    start_daemon: StartDaemon,
) -> None:
    # Replies land 40-160 ms after sending against a 100 ms timeout: about half in time.
    async with EchoTarget(delay=0.1, jitter=0.06) as target:
        text = probe_yaml(target.url).replace("timeout: 1s", "timeout: 100ms")
        text = text.replace("interval: 50ms", "interval: 120ms")
        d = await start_daemon(config(text))

        def settled() -> bool:
            sent = d.count("probe_messages_sent_total", probe="p")
            done = d.count("probe_messages_received_total", probe="p") + d.count(
                "probe_messages_lost_total", probe="p"
            )
            return sent >= 20 and done >= 15

        await wait_until(settled, within=20, what="20 messages settled")
        observed = d.count("probe_message_rtt_seconds_count", probe="p")
        assert observed >= 1 and d.count("probe_messages_lost_total", probe="p") >= 1
        # Every latency recorded is within the timeout; the rest were counted lost.
        assert d.count("probe_message_rtt_seconds_bucket", probe="p", le="0.1") == observed
        assert d.count("probe_messages_unmatched_total", probe="p", reason="late") >= 1
