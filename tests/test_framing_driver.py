"""run_step: setup steps driven over plain send/recv callables (frames scripted in order)."""

from __future__ import annotations

import pytest

from probed.framing import Heartbeat, Invalid, Message, Opened, Ready, SocketIOFraming
from probed.framing.driver import SetupFailed, run_step


class Wire:
    def __init__(self, inbound: list[str]) -> None:
        self.inbound = inbound
        self.sent: list[str] = []

    async def send(self, text: str) -> None:
        self.sent.append(text)

    async def recv(self) -> str:
        return self.inbound.pop(0)


async def test_steps_answer_pings_and_keep_what_arrived_meanwhile() -> None:
    framing = SocketIOFraming()
    wire = Wire(
        [
            "2",  # a ping before the open: answered, reported
            '0{"sid":"e","pingInterval":25000,"pingTimeout":20000}',
            "junk",
            '42["early",1]',
            '40{"sid":"s"}',
        ]
    )
    open_step, connect_step = framing.setup_steps()
    opened, others = await run_step(framing, open_step, wire.send, wire.recv)
    assert opened == Opened("e", 25.0, 20.0)
    assert others == [Heartbeat("server_ping")]
    assert wire.sent == ["3"]
    ready, others = await run_step(framing, connect_step, wire.send, wire.recv)
    assert ready == Ready("s", {"sid": "s"})
    assert others == [Invalid("unknown_packet"), Message("early", 1)]
    assert wire.sent == ["3", "40"]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ('44{"message":"nope"}', "connect_error"),
        ("41", "namespace_disconnect"),
        ("1", "server_close"),
    ],
)
async def test_refusal_or_close_fails_the_step_by_name(frame: str, reason: str) -> None:
    framing = SocketIOFraming()
    wire = Wire(['0{"pingInterval":1,"pingTimeout":1}', frame])
    for step in framing.setup_steps():
        try:
            await run_step(framing, step, wire.send, wire.recv)
        except SetupFailed as exc:
            assert exc.step == "namespace_connect"
            assert exc.reason == reason
            return
    raise AssertionError("the step did not fail")


def test_every_invalid_reason_in_the_code_is_declared() -> None:
    # The bounded label set is checked against the source, so a new reason cannot slip past it.
    import re
    from pathlib import Path

    import probed.framing as framing_package
    from probed.framing import INVALID_REASONS

    folder = Path(framing_package.__file__).parent
    used = {
        reason
        for path in folder.glob("*.py")
        for reason in re.findall(r'Invalid\("([a-z_]+)"\)', path.read_text())
    }
    assert used
    assert used <= INVALID_REASONS
