"""The fanout kind against the reference pub/sub target, whose ground truth says what it did."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from probed import kinds, logs
from probed.config import ProbeConfig
from probed.targets.pubsub import PubSubTarget
from tests.conftest import RunningDaemon, config, parse_exposition, wait_until
from tests.test_exposition import render

StartDaemon = Callable[..., Awaitable[RunningDaemon]]


def fanout_yaml(url: str, *, count: int = 3, interval: str = "20ms", timeout: str = "300ms") -> str:
    return f"""
probes:
  - name: room
    kind: fanout
    interval: {interval}
    timeout: {timeout}
    publisher:
      url: {url}
      setup:
        - name: join
          send: '{{"type":"join","room":"r1","name":"{{probe}}-pub"}}'
          expect: {{where: {{type: joined}}}}
      connection: {{reconnect: {{initial: 50ms, max: 100ms}}}}
    subscribers:
      url: {url}
      count: {count}
      setup:
        - name: join
          send: '{{"type":"join","room":"r1"}}'
          expect: {{where: {{type: joined}}}}
      connection: {{reconnect: {{initial: 50ms, max: 100ms}}}}
    message:
      template: '{{"type":"publish","room":"r1","id":"{{id}}"}}'
      match: {{json: id, where: {{type: message}}}}
"""


def truth_total(target: PubSubTarget, field: str) -> int:
    reports: dict[str, dict[str, object]] = dict(target.truth())  # type: ignore[arg-type]
    return sum(
        int(str(report[field])) for name, report in reports.items() if name.startswith("conn-")
    )


async def test_one_way_delivery_tracks_the_injected_delay(start_daemon: StartDaemon) -> None:
    async with PubSubTarget(delay=0.03, chatter_interval=0.05) as target:
        d = await start_daemon(config(fanout_yaml(target.url)))
        await wait_until(lambda: d.count("probe_fanout_complete_seconds_count", probe="room") >= 30)
        n = d.count("probe_message_delivery_seconds_count", probe="room")
        mean = d.count("probe_message_delivery_seconds_sum", probe="room") / n
        assert 0.03 <= mean < 0.03 + 0.03, mean  # the injected 30 ms plus a small base
        assert d.value("probe_connections_open", probe="room", role="subscriber") == 3
        assert d.value("probe_connections_open", probe="room", role="publisher") == 1
        # Room chatter (another user's messages) is ignored, never a delivery or duplicate.
        assert d.count("probe_messages_duplicated_total", probe="room") == 0
        assert d.count("probe_messages_ignored_total", probe="room", reason="foreign") > 0
        complete = d.count("probe_fanout_complete_seconds_sum", probe="room") / d.count(
            "probe_fanout_complete_seconds_count", probe="room"
        )
        assert complete >= mean


async def test_a_ten_percent_drop_is_about_ten_percent_lost(start_daemon: StartDaemon) -> None:
    async with PubSubTarget(drop=0.1, seed=7) as target:
        d = await start_daemon(config(fanout_yaml(target.url)))
        await wait_until(lambda: d.count("probe_messages_sent_total", probe="room") >= 600, 30)
        target.set_faults(drop=0.0)
        sent = d.count("probe_messages_sent_total", probe="room")
        # Once everything sent under the fault has expired, the probe's loss is the truth's.
        await wait_until(lambda: d.count("probe_messages_lost_total", probe="room") >= 1)
        await wait_until(
            lambda: (
                d.count("probe_messages_lost_total", probe="room") == truth_total(target, "dropped")
            ),
            what="lost == dropped by the server",
        )
        lost = d.count("probe_messages_lost_total", probe="room")
        assert 0.05 * sent <= lost <= 0.16 * sent, (lost, sent)


async def test_duplicates_and_reordering_are_counted_exactly(start_daemon: StartDaemon) -> None:
    async with PubSubTarget(duplicate=0.05, reorder=0.05, reorder_hold=0.05, seed=3) as target:
        d = await start_daemon(config(fanout_yaml(target.url, interval="30ms", timeout="1s")))
        await wait_until(lambda: d.count("probe_messages_received_total", probe="room") >= 300, 30)
        target.set_faults(duplicate=0.0, reorder=0.0)

        def settled() -> bool:
            return d.count("probe_messages_duplicated_total", probe="room") == truth_total(
                target, "duplicated"
            ) and d.count("probe_messages_reordered_total", probe="room") == truth_total(
                target, "reordered"
            )

        await wait_until(settled, what="duplicates and reorders equal the server's truth")
        assert truth_total(target, "duplicated") > 0 and truth_total(target, "reordered") > 0


async def test_reconnects_of_either_side_are_not_loss(start_daemon: StartDaemon) -> None:
    async with PubSubTarget() as target:
        d = await start_daemon(config(fanout_yaml(target.url)))
        for round_ in (1, 2, 3):
            await wait_until(
                lambda: d.value("probe_connections_open", probe="room", role="subscriber") == 3
            )
            before = d.count("probe_fanout_complete_seconds_count", probe="room")

            def five_more(b: float = before) -> bool:
                return d.count("probe_fanout_complete_seconds_count", probe="room") >= b + 5

            await wait_until(five_more)
            target.close_all(1011, f"restart {round_}")
        await wait_until(
            lambda: (
                d.count("probe_disconnects_total", probe="room", role="subscriber") >= 0
                and d.count(
                    "probe_disconnects_total",
                    probe="room",
                    reason="server_close",
                    role="subscriber",
                )
                >= 9
            )
        )
        await wait_until(
            lambda: d.value("probe_connections_open", probe="room", role="subscriber") == 3
        )
        # Give anything in flight its full timeout to be (wrongly) expired, then look.
        sent = d.count("probe_messages_sent_total", probe="room")
        await wait_until(lambda: d.count("probe_messages_sent_total", probe="room") >= sent + 60)
        assert d.count("probe_messages_lost_total", probe="room") == 0


async def test_messages_of_another_publisher_are_ignored(start_daemon: StartDaemon) -> None:
    async with PubSubTarget() as target:
        d = await start_daemon(config(fanout_yaml(target.url, interval="100ms")))
        await wait_until(lambda: d.count("probe_fanout_complete_seconds_count", probe="room") >= 1)
        async with connect(target.url) as other:
            await other.send('{"type":"join","room":"r1"}')
            await other.recv()
            for n in range(5):
                await other.send(f'{{"type":"publish","room":"r1","id":"someone-else-{n}"}}')
            await wait_until(
                lambda: (
                    d.count("probe_messages_ignored_total", probe="room", reason="foreign") >= 15
                )
            )
        assert d.count("probe_messages_unmatched_total", probe="room", reason="unknown") == 0


async def test_once_publishes_one_message_to_every_subscriber() -> None:
    async with PubSubTarget() as target:
        cfg: ProbeConfig = config(fanout_yaml(target.url)).probes[0]
        probe = kinds.build(cfg, kinds.new_metrics(cfg), logs.get(probe="room"))
        assert await probe.once()
    async with PubSubTarget(broadcast=False) as echo_only:
        # A server that echoes to the publisher only never fans out.
        cfg = config(fanout_yaml(echo_only.url)).probes[0]
        probe = kinds.build(cfg, kinds.new_metrics(cfg), logs.get(probe="room"))
        assert not await probe.once()


def test_fanout_config_checks() -> None:
    with pytest.raises(Exception, match="fan-out needs the id's JSON path"):
        config(
            fanout_yaml("ws://h/")
            .replace("match: {json: id, where: {type: message}}", "match: {raw: true}")
            .replace('"id":"{id}"', '"id":"{seq}"')
        )
    with pytest.raises(Exception, match=r"unknown placeholder \{room\}"):
        config(fanout_yaml("ws://h/").replace('"room":"r1","id"', '"room":"{room}","id"'))


async def test_golden_exposition_of_the_fanout_kind(start_daemon: StartDaemon) -> None:
    async with PubSubTarget() as target:
        text = "global:\n  labels: {location: test-lab}\n" + fanout_yaml(target.url)
        d = await start_daemon(config(text))
        await wait_until(lambda: d.count("probe_fanout_complete_seconds_count", probe="room") >= 2)
        target.close_all(1011, "golden")  # so that close codes and reconnects have samples
        await wait_until(
            lambda: (
                d.count("probe_reconnect_duration_seconds_count", probe="room", role="subscriber")
                >= 3
                and d.count(
                    "probe_reconnect_duration_seconds_count", probe="room", role="publisher"
                )
                >= 1
            )
        )
        got = render(parse_exposition(await d.scrape()))
    golden = Path(__file__).parent / "golden" / "fanout.txt"
    if os.environ.get("PROBED_UPDATE_GOLDEN"):
        golden.write_text(got)
    assert got == golden.read_text(), "the fanout kind's metric contract changed"
