"""Throughput of the per-message hot path: bounded decode + reply filter + template render.

Every inbound message of every held session goes through decode and Filter.classify, so their
cost per message bounds how many messages one core can take. Figures are printed for quoting;
the asserts are loose floors that only a gross regression (or a quadratic path) would trip.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from probed.framing import GraphQLWSFraming, SocketIOFraming
from probed.matching import Filter, decode_json, equals, one_of, regex
from probed.template import Template

pytestmark = pytest.mark.perf

N = 50_000

ACK = json.dumps({"type": "ack", "id": "a1b2c3-4-12345", "ts": 1700000000.123})
BROADCAST = json.dumps(
    {"type": "message", "room": "general", "id": "chatter-99", "from": "bob", "text": "x" * 200}
)
NESTED = json.dumps({"data": {"onMessage": {"id": "m-1", "body": {"a": [1, 2, {"b": 3}]}}}})


def per_message_us(fn: Callable[[], object], n: int = N) -> float:
    for _ in range(1000):
        fn()
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - start) / n / 1000


def test_throughput(capsys: pytest.CaptureFixture[str]) -> None:
    replies = Filter("id", [equals("type", "ack")])
    rich = Filter(
        "data.onMessage.id",
        [one_of("data.onMessage.body.a.2.b", [3, 4]), regex("data.onMessage.id", r"^m-\d+$")],
        {"body": "data.onMessage.body"},
    )
    template = Template(
        '{"type":"publish","room":"{room}","id":"{id}","seq":{seq},"t":{send_time}}'
    )
    values = {"room": "general", "id": "a1b2c3-4-1", "seq": "1", "send_time": "1700000000.1"}
    sio, gql = SocketIOFraming(), GraphQLWSFraming()
    gql.receive('{"type":"connection_ack"}')
    sio_frame = '42["message",' + ACK + "]"
    gql_frame = json.dumps({"id": "s", "type": "next", "payload": json.loads(NESTED)})
    deep = "[" * 10_000 + "]" * 10_000
    figures = {
        "json.loads (ack, baseline)": per_message_us(lambda: json.loads(ACK)),
        "decode_json (ack)": per_message_us(lambda: decode_json(ACK)),
        "Filter.classify ack (reply)": per_message_us(lambda: replies.classify(ACK)),
        "Filter.classify broadcast (filtered)": per_message_us(lambda: replies.classify(BROADCAST)),
        "Filter.classify nested, 2 conditions + capture": per_message_us(
            lambda: rich.classify(NESTED)
        ),
        "decode_json 10k-deep (too_deep)": per_message_us(lambda: replies.classify(deep), n=2000),
        "Template.render (4 placeholders)": per_message_us(lambda: template.render(values)),
        "SocketIOFraming.receive event": per_message_us(lambda: sio.receive(sio_frame)),
        "GraphQLWSFraming.receive next": per_message_us(lambda: gql.receive(gql_frame)),
    }
    with capsys.disabled():
        print()
        for name, us in figures.items():
            print(f"  {name:48s} {us:8.2f} us/message  ({1e6 / us:,.0f}/s)")
    assert figures["Filter.classify ack (reply)"] < 50
    assert figures["decode_json 10k-deep (too_deep)"] < 5000
