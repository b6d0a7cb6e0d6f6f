"""Reconnection behaviour: how sessions end, how connects fail, and how the probe comes back.

Everything runs against real servers on ephemeral ports: the reference echo target, the fault
proxy in front of it, and tiny hand-written servers that misbehave in one precise way each. Waits
are on conditions with generous bounds; the few timing assertions measure a gap against the
backoff policy, never a sleep.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email.utils import formatdate
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import trustme
from cryptography import x509
from structlog.testing import capture_logs
from structlog.typing import EventDict, WrappedLogger
from websockets.asyncio.server import ServerConnection, serve
from websockets.utils import accept_key

from probed.metrics import DISCONNECT_REASONS
from probed.targets.echo import EchoTarget
from probed.targets.proxy import FaultProxy
from tests.conftest import RunningDaemon, bound, config, wait_until

StartDaemon = Callable[..., Awaitable[RunningDaemon]]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# Clock slack for gaps measured by polling (10 ms) on a noisy machine: lower bounds only ever
# lose a few milliseconds to it, upper bounds get the generous, scalable kind.
EARLY = 0.02


# -- config and metric helpers -----------------------------------------------------------------


def probe_yaml(
    url: str,
    *,
    name: str = "p",
    interval: str = "50ms",
    timeout: str = "1s",
    connection: str = "",
    tls: str = "",
) -> str:
    """One probe entry; `connection` and `tls` are YAML flow mappings."""
    lines = [
        f"  - name: {name}",
        "    kind: echo",
        f"    url: {url}",
        f"    interval: {interval}",
        f"    timeout: {timeout}",
    ]
    if connection:
        lines.append(f"    connection: {connection}")
    if tls:
        lines.append(f"    tls: {tls}")
    return "\n".join(lines) + "\n"


def probes(*entries: str) -> str:
    return "probes:\n" + "".join(entries)


def up(d: RunningDaemon, probe: str = "p") -> bool:
    return d.value("probe_connections_open", probe=probe) == 1


def disconnects(d: RunningDaemon, reason: str, probe: str = "p") -> float:
    return d.count("probe_disconnects_total", probe=probe, reason=reason)


def all_disconnects(d: RunningDaemon, probe: str = "p") -> float:
    return sum(disconnects(d, reason, probe) for reason in DISCONNECT_REASONS)


def connect_errors(d: RunningDaemon, reason: str, probe: str = "p") -> float:
    return d.count("probe_connect_errors_total", probe=probe, reason=reason)


def close_codes(d: RunningDaemon, code: int, probe: str = "p") -> float:
    return d.count("probe_close_codes_total", probe=probe, code=str(code))


def reconnects(d: RunningDaemon, probe: str = "p") -> float:
    return d.count("probe_reconnect_duration_seconds_count", probe=probe)


def restarts(d: RunningDaemon, probe: str = "p") -> float:
    return d.count("probed_probe_restarts_total", probe=probe)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def times_of_increments(counter: Callable[[], float], n: int, within: float) -> list[float]:
    """The instants (monotonic) at which `counter` went up, until it went up `n` times.

    Two increments seen in one poll are recorded at the same instant, a zero gap: a burst
    cannot hide between polls.
    """
    seen: list[float] = []
    last = counter()
    deadline = time.monotonic() + bound(within)
    while len(seen) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"saw {len(seen)} of {n} increments within {bound(within)}s")
        now_value = counter()
        if now_value > last:
            seen.extend([time.monotonic()] * int(now_value - last))
            last = now_value
        await asyncio.sleep(0.005)
    return seen


@pytest.fixture
def events() -> Iterator[list[EventDict]]:
    """Every log event while the test runs, stamped with the monotonic clock as `t`."""

    def stamp(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
        event["t"] = time.monotonic()
        return event

    with capture_logs(processors=[stamp]) as entries:
        yield entries


def named(entries: list[EventDict], event: str, probe: str = "p") -> list[EventDict]:
    return [e for e in entries if e.get("event") == event and e.get("probe") == probe]


@pytest.fixture
async def proxy(echo: EchoTarget) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as p:
        yield p


def via(p: FaultProxy) -> str:
    return f"ws://127.0.0.1:{p.port}/ws"


# -- tiny hostile servers ----------------------------------------------------------------------


class RawServer:
    """A real TCP server whose handler misbehaves on purpose; records when it accepted."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.accepted: list[float] = []

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def url(self, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/ws"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(time.monotonic())
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def read_to_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def complete_upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer a WebSocket upgrade by hand, as a minimal conforming server would."""
    request = await read_request(reader)
    key = ""
    for line in request.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-key":
            key = value.strip()
    assert key, "the client sent no Sec-WebSocket-Key"
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n"
    )
    await writer.drain()


def closed_port() -> int:
    """A port on which nothing listens: bound, noted, closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- 1. reset ----------------------------------------------------------------------------------


async def test_reset_is_detected_within_a_second_and_reconnected(
    echo: EchoTarget, proxy: FaultProxy, start_daemon: StartDaemon
) -> None:
    d = await start_daemon(
        config(probes(probe_yaml(via(proxy), connection="{reconnect: {initial: 100ms}}")))
    )
    await wait_until(lambda: d.count("probe_messages_received_total", probe="p") >= 1, what="echo")
    assert up(d)
    started_at = d.value("probe_connection_start_timestamp_seconds", probe="p")
    assert started_at is not None

    t0 = time.monotonic()
    proxy.reset()
    await wait_until(lambda: disconnects(d, "reset") >= 1, what="reset counted")
    detected = time.monotonic() - t0
    assert detected < bound(1.0), f"reset detected after {detected:.3f}s"
    assert close_codes(d, 1006) == 1

    await wait_until(lambda: up(d) and reconnects(d) == 1, what="reconnected")
    assert all_disconnects(d) == 1
    assert proxy.connections_total == 2
    # Loss to usable again includes the 100 ms backoff floor.
    assert d.count("probe_reconnect_duration_seconds_sum", probe="p") >= 0.1 - EARLY
    restarted_at = d.value("probe_connection_start_timestamp_seconds", probe="p")
    assert restarted_at is not None
    assert restarted_at > started_at
    await wait_until(lambda: d.value("probe_success", probe="p") == 1, what="success again")


# -- 2. blackhole ------------------------------------------------------------------------------


async def test_blackhole_is_a_stall_detected_within_interval_plus_timeout(
    echo: EchoTarget, proxy: FaultProxy, start_daemon: StartDaemon
) -> None:
    connection = (
        "{connect_timeout: 2s, keepalive: {interval: 1s, timeout: 1s},"
        " reconnect: {initial: 100ms, max: 500ms}}"
    )
    d = await start_daemon(config(probes(probe_yaml(via(proxy), connection=connection))))
    await wait_until(lambda: d.count("probe_messages_received_total", probe="p") >= 1, what="echo")

    t0 = time.monotonic()
    proxy.blackhole()
    await wait_until(lambda: disconnects(d, "stalled") >= 1, within=15, what="stall counted")
    detected = time.monotonic() - t0
    assert detected <= bound(1.0 + 1.0 + 1.0), f"stall detected after {detected:.3f}s"
    # The socket stayed open: nothing reset it, nothing closed it.
    assert all_disconnects(d) == 1
    assert close_codes(d, 1006) == 0

    proxy.heal()
    await wait_until(lambda: up(d) and reconnects(d) == 1, what="back after heal")
    await wait_until(
        lambda: d.value("probe_success", probe="p") == 1, what="messages answered again"
    )
    assert all_disconnects(d) == 1


# -- 3. keepalive ------------------------------------------------------------------------------


async def test_unanswered_pings_are_a_stall(echo: EchoTarget, start_daemon: StartDaemon) -> None:
    connection = "{keepalive: {interval: 500ms, timeout: 500ms}, reconnect: {initial: 100ms}}"
    d = await start_daemon(config(probes(probe_yaml(echo.url, connection=connection))))
    await wait_until(lambda: up(d), what="session up")

    t0 = time.monotonic()
    echo.set_pings(False)
    await wait_until(lambda: disconnects(d, "stalled") >= 1, what="stall counted")
    assert time.monotonic() - t0 <= bound(0.5 + 0.5 + 1.0)
    # Messages were still echoed all along: only the missing pong ended the session.
    assert d.count("probe_messages_received_total", probe="p") >= 1
    assert all_disconnects(d) == disconnects(d, "stalled")

    echo.heal()
    stalls = disconnects(d, "stalled")
    await wait_until(lambda: up(d) and reconnects(d) >= stalls, what="back after heal")


async def test_message_keepalive_stalls_when_nothing_comes_back(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    # Probe messages are rare (5 s), so only the keepalive messages' echoes keep the session fed.
    connection = (
        '{keepalive: {mode: message, message: \'{"type":"keepalive"}\','
        " interval: 500ms, timeout: 500ms}, reconnect: {initial: 100ms}}"
    )
    d = await start_daemon(
        config(probes(probe_yaml(echo.url, interval="5s", connection=connection)))
    )
    # Echoed keepalives carry no id: each one is counted as unmatched. Three of them span more
    # than interval + timeout, so the keepalive is what held the session.
    await wait_until(
        lambda: d.count("probe_messages_unmatched_total", probe="p", reason="missing_field") >= 3,
        what="echoed keepalives",
    )
    assert all_disconnects(d) == 0

    t0 = time.monotonic()
    echo.set_echo(False)
    await wait_until(lambda: disconnects(d, "stalled") >= 1, what="stall counted")
    assert time.monotonic() - t0 <= bound(0.5 + 0.5 + 1.0)
    assert all_disconnects(d) == disconnects(d, "stalled")


async def test_message_keepalive_that_cannot_be_written_is_a_stall_not_a_crash(
    start_daemon: StartDaemon,
) -> None:
    """A peer that keeps sending but stopped reading: the keepalive write can never drain.

    The server pushes a frame every 100 ms (so the session is never silent) and reads nothing;
    the 1 MiB keepalive cannot leave within the keepalive timeout. That is a stalled session.
    """

    async def talks_but_never_reads(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await complete_upgrade(reader, writer)
        while True:
            writer.write(b"\x81\x02hi")  # unmasked text frame, server to client
            await writer.drain()
            await asyncio.sleep(0.1)

    big = "k" * (1 << 20)
    connection = (
        f"{{keepalive: {{mode: message, message: '{big}', interval: 200ms, timeout: 500ms}},"
        " reconnect: {initial: 200ms}}"
    )
    async with RawServer(talks_but_never_reads) as server:
        d = await start_daemon(
            config(probes(probe_yaml(server.url(), interval="10s", connection=connection)))
        )
        await wait_until(lambda: all_disconnects(d) >= 1, what="the session ended")
        assert disconnects(d, "shutdown") == 0, "a write stall was recorded as a shutdown"
        assert disconnects(d, "stalled") == 1
        assert restarts(d) == 0, "the probe crashed instead of classifying the stall"


# -- 4. server close ---------------------------------------------------------------------------


async def test_server_close_codes_are_counted_as_received(
    echo: EchoTarget, start_daemon: StartDaemon, events: list[EventDict]
) -> None:
    d = await start_daemon(
        config(probes(probe_yaml(echo.url, connection="{reconnect: {initial: 100ms}}")))
    )
    await wait_until(lambda: up(d) and echo.sessions == 1, what="session up")

    echo.close_all(4001, "bye")
    await wait_until(lambda: disconnects(d, "server_close") == 1, what="server_close counted")
    assert close_codes(d, 4001) == 1
    (down,) = named(events, "session down")
    assert down["reason"] == "server_close"
    assert down["close_code"] == 4001
    assert down["close_reason"] == "bye"
    assert down["lived_s"] > 0

    await wait_until(lambda: up(d) and echo.sessions == 1 and reconnects(d) == 1, what="back")
    echo.close_all(1011, "internal error")
    await wait_until(lambda: disconnects(d, "server_close") == 2, what="second server_close")
    assert close_codes(d, 1011) == 1
    assert close_codes(d, 4001) == 1
    assert close_codes(d, 1006) == 0
    assert all_disconnects(d) == 2
    await wait_until(lambda: up(d) and reconnects(d) == 2, what="back again")


# -- 5. refused upgrades and Retry-After -------------------------------------------------------


@pytest.mark.parametrize("status", [503, 429])
async def test_refused_upgrade_honours_retry_after(
    echo: EchoTarget, start_daemon: StartDaemon, events: list[EventDict], status: int
) -> None:
    echo.refuse_upgrades(status, retry_after=2)
    # The backoff alone would retry within 200 ms: any longer gap is Retry-After's doing.
    d = await start_daemon(
        config(probes(probe_yaml(echo.url, connection="{reconnect: {initial: 100ms, max: 200ms}}")))
    )
    seen = await times_of_increments(lambda: echo.upgrades, 3, within=15)
    for gap in gaps(seen):
        assert 2.0 - 0.2 <= gap <= 2.0 + bound(1.0), f"upgrade attempts {gap:.3f}s apart"
    assert connect_errors(d, f"http_{status}") >= 3
    failed = named(events, "connect failed")
    assert len(failed) >= 3
    assert {(e["reason"], e["phase"], e["retry_in_s"]) for e in failed} == {
        (f"http_{status}", "upgrade", 2.0)
    }

    echo.heal()
    await wait_until(lambda: up(d), within=15, what="session after heal")
    assert all_disconnects(d) == 0


# -- 6. backoff spacing ------------------------------------------------------------------------


async def test_backoff_against_a_closed_port_is_spaced_capped_and_bounded(
    start_daemon: StartDaemon, events: list[EventDict]
) -> None:
    initial, cap = 0.2, 1.0
    url = f"ws://127.0.0.1:{closed_port()}/ws"
    d = await start_daemon(
        config(probes(probe_yaml(url, connection="{reconnect: {initial: 200ms, max: 1s}}")))
    )

    def span() -> float:
        failed = named(events, "connect failed")
        return failed[-1]["t"] - failed[0]["t"] if len(failed) >= 2 else 0.0

    await wait_until(lambda: span() >= 4.0 and len(named(events, "connect failed")) >= 9, 20)
    failed = named(events, "connect failed")
    assert {(e["reason"], e["phase"]) for e in failed} == {("refused", "tcp")}
    assert [e["attempt"] for e in failed] == list(range(1, len(failed) + 1))

    # The scheduled delays follow the policy exactly: U(initial, min(max, initial * 2^(n-1))).
    scheduled = [e["retry_in_s"] for e in failed]
    for n, delay in enumerate(scheduled, start=1):
        ceiling = min(cap, initial * 2 ** (n - 1))
        assert initial <= delay <= ceiling + 0.001, f"attempt {n}: delay {delay}"
    assert scheduled[0] == initial
    # Later delays are drawn from a wider range: on average clearly above the floor.
    later = scheduled[4:]
    assert sum(later) / len(later) > initial + 0.05, later

    # And the probe really waited them out: never sooner, never much later.
    measured = gaps([e["t"] for e in failed])
    for n, (gap, delay) in enumerate(zip(measured, scheduled, strict=False), start=1):
        assert gap >= delay - EARLY, f"attempt {n + 1} came {gap:.3f}s after {n}, not {delay}"
        assert gap <= cap + bound(0.5), f"attempt {n + 1} came {gap:.3f}s after {n}"

    # No hot loop: over 4 s at most one attempt per `initial`.
    t0 = failed[0]["t"]
    assert sum(1 for e in failed if e["t"] - t0 <= 4.0) <= 4.0 / initial + 1
    assert connect_errors(d, "refused") >= len(failed)
    assert not up(d)
    assert not d.task.done()


# -- 7. kill and restart -----------------------------------------------------------------------


async def test_target_restart_is_one_disconnect_and_one_reconnect(
    start_daemon: StartDaemon,
) -> None:
    first = EchoTarget()
    await first.start()
    port = first.port
    try:
        d = await start_daemon(
            config(
                probes(probe_yaml(first.url, connection="{reconnect: {initial: 500ms, max: 1s}}"))
            )
        )
        await wait_until(lambda: up(d) and first.sessions == 1, what="session up")
    finally:
        await first.stop()

    await wait_until(lambda: connect_errors(d, "refused") >= 1, what="refused while down")
    assert not up(d)
    async with EchoTarget(port=port) as second:
        await wait_until(lambda: up(d) and second.sessions == 1, within=15, what="back up")
        assert all_disconnects(d) == 1
        assert disconnects(d, "server_close") == 1
        assert close_codes(d, 1001) == 1
        assert reconnects(d) == 1
        assert first.upgrades == 1
        assert second.upgrades == 1


async def start_echo_process(port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "probed", "target", "echo", "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), bound(30))
    assert b"listening" in line, line
    return proc


async def test_killed_target_process_is_one_reset_and_one_reconnect(
    start_daemon: StartDaemon,
) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/ws"
    first = await start_echo_process(port)
    second: asyncio.subprocess.Process | None = None
    try:
        connection = "{reconnect: {initial: 200ms, max: 500ms}}"
        d = await start_daemon(config(probes(probe_yaml(url, connection=connection))))
        await wait_until(lambda: up(d), what="session up")
        first.kill()  # SIGKILL: no close frame, the kernel tears the socket down
        await first.wait()
        await wait_until(lambda: all_disconnects(d) == 1, what="the loss detected")
        assert disconnects(d, "reset") == 1 and close_codes(d, 1006) == 1
        await wait_until(lambda: connect_errors(d, "refused") >= 1, what="refused while down")
        second = await start_echo_process(port)
        await wait_until(lambda: up(d), within=15, what="back up")
        assert all_disconnects(d) == 1
        assert reconnects(d) == 1
        before = d.count("probe_messages_received_total", probe="p")
        await wait_until(
            lambda: d.count("probe_messages_received_total", probe="p") > before,
            what="echoes from the new process",
        )
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()


# -- 8. churn ----------------------------------------------------------------------------------


async def test_churn_closes_on_purpose_reconnects_at_once_and_loses_nothing(
    echo: EchoTarget, start_daemon: StartDaemon, events: list[EventDict]
) -> None:
    # A 2 s backoff floor: if churn went through the backoff, reconnects would take >= 2 s.
    connection = "{churn: 1s, reconnect: {initial: 2s, max: 2s}}"
    d = await start_daemon(config(probes(probe_yaml(echo.url, connection=connection))))
    await wait_until(
        lambda: disconnects(d, "churn") >= 2 and up(d) and reconnects(d) >= 2,
        within=15,
        what="two churns",
    )
    churned = disconnects(d, "churn")
    assert all_disconnects(d) == churned
    assert list(echo.close_codes).count(1000) >= 2
    assert set(echo.close_codes) == {1000}
    assert reconnects(d) == churned
    count = reconnects(d)
    assert d.count("probe_reconnect_duration_seconds_bucket", probe="p", le="1.0") == count
    assert d.count("probe_messages_received_total", probe="p") >= 10
    assert d.count("probe_messages_lost_total", probe="p") == 0

    # Churn restarts the backoff: a failure right after one is attempt 1, at the floor.
    echo.refuse_upgrades(503)
    await wait_until(lambda: len(named(events, "connect failed")) >= 1, what="a refused reconnect")
    failed = named(events, "connect failed")[0]
    assert (failed["attempt"], failed["retry_in_s"]) == (1, 2.0)


async def test_reset_after_decides_between_at_once_and_backoff(
    echo: EchoTarget, proxy: FaultProxy, start_daemon: StartDaemon, events: list[EventDict]
) -> None:
    connection = "{reconnect: {initial: 1s, max: 1s, reset_after: 2s}}"
    d = await start_daemon(config(probes(probe_yaml(via(proxy), connection=connection))))

    def age() -> float:
        started = d.value("probe_connection_start_timestamp_seconds", probe="p")
        return time.time() - started if started and up(d) else 0.0

    # A session that stayed up for reset_after: the next attempt is attempt 0, at once.
    await wait_until(lambda: age() > 2.05, what="a session older than reset_after")
    proxy.reset()
    await wait_until(lambda: up(d) and reconnects(d) == 1, what="first reconnect")
    first = d.count("probe_reconnect_duration_seconds_sum", probe="p")
    assert first < 1.0, f"a healthy session's loss waited {first:.3f}s, like a backoff"

    # A session that died young: the backoff floor applies.
    assert age() < 2.0
    proxy.reset()
    await wait_until(lambda: up(d) and reconnects(d) == 2, what="second reconnect")
    second = d.count("probe_reconnect_duration_seconds_sum", probe="p") - first
    assert second >= 1.0 - EARLY
    assert [e["reconnect_in_s"] for e in named(events, "session down")] == [0.0, 1.0]
    assert [e["reason"] for e in named(events, "session down")] == ["reset", "reset"]


async def test_shutdown_says_going_away_and_counts_shutdown(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    d = await start_daemon(config(probes(probe_yaml(echo.url))))
    await wait_until(lambda: up(d) and echo.sessions == 1, what="session up")
    (metrics,) = d.daemon.exposition.probes()

    d.daemon.stop()
    await asyncio.wait_for(d.task, bound(10))
    counted = {
        reason: metrics.registry.get_sample_value("probe_disconnects_total", {"reason": reason})
        for reason in DISCONNECT_REASONS
    }
    assert counted["shutdown"] == 1
    assert sum(v or 0 for v in counted.values()) == 1
    await wait_until(lambda: echo.sessions == 0, what="the target saw the close")
    assert list(echo.close_codes) == [1001]


async def test_shutdown_is_prompt_even_when_the_close_goes_unanswered(
    echo: EchoTarget, start_daemon: StartDaemon
) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/ws"
        connection = "{close_timeout: 30s, keepalive: {interval: 1m, timeout: 30s}}"
        d = await start_daemon(config(probes(probe_yaml(url, connection=connection))))
        await wait_until(lambda: up(d), what="session up")
        proxy.blackhole()  # the close frame will never be answered
        started = time.monotonic()
        d.daemon.stop()
        await asyncio.wait_for(d.task, bound(10))
        # SIGTERM promises an exit within 5 s; a 30 s close_timeout must not break it.
        assert time.monotonic() - started < 5


# -- 9. hostile servers ------------------------------------------------------------------------


async def test_server_that_never_answers_times_out_in_the_right_phase(
    start_daemon: StartDaemon, events: list[EventDict]
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_to_eof(reader)

    connection = "{connect_timeout: 300ms, reconnect: {initial: 200ms, max: 400ms}}"
    async with RawServer(silent) as server:
        t0 = time.monotonic()
        d = await start_daemon(
            config(
                probes(
                    probe_yaml(server.url("ws"), name="ws", connection=connection),
                    probe_yaml(server.url("wss"), name="wss", connection=connection),
                )
            )
        )
        await wait_until(
            lambda: (
                connect_errors(d, "timeout", "ws") >= 3 and connect_errors(d, "timeout", "wss") >= 3
            ),
            what="timeouts",
        )
        elapsed = time.monotonic() - t0
        assert {e["phase"] for e in named(events, "connect failed", "ws")} == {"upgrade"}
        assert {e["phase"] for e in named(events, "connect failed", "wss")} == {"tls"}
        # Each attempt costs the 300 ms deadline plus at least the 200 ms floor.
        assert len(server.accepted) <= 2 * (elapsed / 0.5 + 1)
        assert not d.task.done()
        assert restarts(d, "ws") == restarts(d, "wss") == 0


async def test_garbage_upgrade_answer_is_a_protocol_error(
    start_daemon: StartDaemon, events: list[EventDict]
) -> None:
    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HELLO\r\n\r\n")
        await read_to_eof(reader)

    connection = "{connect_timeout: 2s, reconnect: {initial: 100ms, max: 200ms}}"
    async with RawServer(hello) as server:
        d = await start_daemon(config(probes(probe_yaml(server.url(), connection=connection))))
        await wait_until(lambda: connect_errors(d, "protocol_error") >= 2, what="protocol_error")
        assert connect_errors(d, "reset") == 0
        assert connect_errors(d, "timeout") == 0
        assert {e["phase"] for e in named(events, "connect failed")} == {"upgrade"}


@pytest.mark.parametrize(
    "junk",
    [
        pytest.param(b"\x00\x9f\xd2junk\x07\n", id="binary-line"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\n", id="bare-lf-banner"),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\nUpgrade: websocket\n\n",
            id="bare-lf-http",
        ),
    ],
)
async def test_junk_upgrade_answer_on_an_open_connection_is_a_protocol_error(
    start_daemon: StartDaemon, junk: bytes
) -> None:
    """Junk lines ended by a bare LF: the server answered, and the connection is still open.

    Nothing was reset and nothing hit end of file, so this must not be counted as "reset".
    """

    async def junk_then_wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(junk)
        await read_to_eof(reader)

    connection = "{connect_timeout: 2s, reconnect: {initial: 100ms, max: 200ms}}"
    async with RawServer(junk_then_wait) as server:
        d = await start_daemon(config(probes(probe_yaml(server.url(), connection=connection))))
        await wait_until(
            lambda: connect_errors(d, "protocol_error") + connect_errors(d, "reset") >= 2,
            what="the junk answer classified",
        )
        assert connect_errors(d, "reset") == 0, "a junk answer was counted as a TCP reset"
        assert connect_errors(d, "protocol_error") >= 2


@pytest.mark.parametrize("abort", [False, True], ids=["fin", "rst"])
async def test_close_mid_handshake_is_a_reset(start_daemon: StartDaemon, abort: bool) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if abort:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            writer.transport.abort()
        else:
            writer.close()

    connection = "{reconnect: {initial: 100ms, max: 200ms}}"
    async with RawServer(hang_up) as server:
        d = await start_daemon(config(probes(probe_yaml(server.url(), connection=connection))))
        await wait_until(lambda: connect_errors(d, "reset") >= 2, what="reset")
        assert connect_errors(d, "protocol_error") == 0
        assert not d.task.done()


async def test_eof_after_upgrade_without_close_frame_is_a_reset(
    start_daemon: StartDaemon,
) -> None:
    async def upgrade_then_fin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await complete_upgrade(reader, writer)
        writer.write_eof()  # FIN, no close frame; keep reading until the client hangs up
        await read_to_eof(reader)

    connection = "{reconnect: {initial: 100ms, max: 200ms}}"
    async with RawServer(upgrade_then_fin) as server:
        d = await start_daemon(config(probes(probe_yaml(server.url(), connection=connection))))
        await wait_until(lambda: disconnects(d, "reset") >= 2, what="resets")
        assert close_codes(d, 1006) == disconnects(d, "reset")
        assert all_disconnects(d) == disconnects(d, "reset")
        assert reconnects(d) >= 1


async def test_redirect_is_reported_not_followed(
    start_daemon: StartDaemon, events: list[EventDict]
) -> None:
    requests: list[bytes] = []

    async def redirect_to_self(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await read_request(reader))
        writer.write(
            b"HTTP/1.1 302 Found\r\nLocation: " + server.url().encode() + b"\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        await read_to_eof(reader)

    connection = "{reconnect: {initial: 100ms, max: 200ms}}"
    async with RawServer(redirect_to_self) as server:
        d = await start_daemon(config(probes(probe_yaml(server.url(), connection=connection))))
        await wait_until(lambda: connect_errors(d, "http_302") >= 3, what="http_302")
        # One request per attempt: the redirect (to the same place) was never followed.
        assert len(requests) <= connect_errors(d, "http_302") + 1
        assert {e["reason"] for e in named(events, "connect failed")} == {"http_302"}


async def test_servers_that_close_at_once_are_server_close_at_backoff_pace(
    start_daemon: StartDaemon,
) -> None:
    accepted: dict[str, list[float]] = {"flood": [], "close": []}

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        mode = ws.request.path.strip("/")
        accepted[mode].append(time.monotonic())
        if mode == "flood":
            # 100 close frames (code 1000) written raw, back to back.
            ws.transport.write(b"\x88\x02\x03\xe8" * 100)
            await ws.wait_closed()
        # "close": returning at once closes right after the accept.

    connection = "{reconnect: {initial: 100ms, max: 200ms}}"
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        t0 = time.monotonic()
        d = await start_daemon(
            config(
                probes(
                    *(
                        probe_yaml(f"ws://127.0.0.1:{port}/{m}", name=m, connection=connection)
                        for m in accepted
                    )
                )
            )
        )
        await wait_until(
            lambda: all(disconnects(d, "server_close", m) >= 5 for m in accepted),
            what="five server closes each",
        )
        elapsed = time.monotonic() - t0
        for mode, times in accepted.items():
            closes = disconnects(d, "server_close", mode)
            assert all_disconnects(d, mode) == closes, mode
            # One close counted per session, however many close frames the server sent.
            assert close_codes(d, 1000, mode) == closes, mode
            # Every reconnect waited at least the 100 ms floor.
            assert len(times) <= elapsed / 0.1 + 2, mode
            for gap in gaps(times):
                assert gap >= 0.1 - EARLY, (mode, gap)
            assert restarts(d, mode) == 0
        assert not d.task.done()


async def test_invalid_frame_after_upgrade_is_a_protocol_error(start_daemon: StartDaemon) -> None:
    async def reserved_bits(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await complete_upgrade(reader, writer)
        writer.write(b"\xf1\x00")  # FIN + all three reserved bits on an empty text frame
        await read_to_eof(reader)

    connection = "{close_timeout: 500ms, reconnect: {initial: 100ms, max: 200ms}}"
    async with RawServer(reserved_bits) as server:
        d = await start_daemon(config(probes(probe_yaml(server.url(), connection=connection))))
        await wait_until(lambda: disconnects(d, "protocol_error") >= 2, what="protocol_error")
        assert disconnects(d, "server_close") == 0
        assert disconnects(d, "reset") == 0
        assert d.count("probe_connect_duration_seconds_count", probe="p") >= 2
        assert restarts(d) == 0


async def test_unknown_host_is_a_dns_error(
    start_daemon: StartDaemon, events: list[EventDict]
) -> None:
    # A label over 63 characters fails inside the resolver library: no query leaves the machine
    # (tests never send traffic beyond loopback, DNS included).
    url = f"ws://{'x' * 64}.invalid:80/ws"
    d = await start_daemon(
        config(probes(probe_yaml(url, connection="{reconnect: {initial: 100ms, max: 200ms}}")))
    )
    await wait_until(lambda: connect_errors(d, "dns") >= 1, what="dns error")
    assert named(events, "connect failed")[0]["phase"] == "dns"


# -- 10. TLS -----------------------------------------------------------------------------------


async def test_tls_phase_and_certificate_expiry(
    start_daemon: StartDaemon, tmp_path: Path, events: list[EventDict]
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    not_after = x509.load_pem_x509_certificate(
        cert.cert_chain_pems[0].bytes()
    ).not_valid_after_utc.timestamp()

    async with EchoTarget(ssl_context=server_ctx) as secure:
        assert secure.url.startswith("wss://")
        d = await start_daemon(
            config(
                probes(
                    probe_yaml(secure.url, name="trusted", tls=f"{{ca_file: {ca_file}}}"),
                    probe_yaml(
                        secure.url,
                        name="untrusted",
                        connection="{reconnect: {initial: 100ms, max: 200ms}}",
                    ),
                )
            )
        )
        await wait_until(
            lambda: d.count("probe_messages_received_total", probe="trusted") >= 1, what="wss echo"
        )
        assert up(d, "trusted")
        for phase in ("dns", "tcp", "tls", "upgrade"):
            value = d.value("probe_connect_phase_seconds", probe="trusted", phase=phase)
            assert value is not None, phase
            assert value > 0 or phase == "dns", phase
        expiry = d.value("probe_tls_cert_expiry_timestamp_seconds", probe="trusted")
        assert expiry is not None
        assert expiry > time.time()
        assert expiry == pytest.approx(not_after, abs=1)

        await wait_until(lambda: connect_errors(d, "tls", "untrusted") >= 2, what="tls error")
        assert not up(d, "untrusted")
        assert {e["phase"] for e in named(events, "connect failed", "untrusted")} == {"tls"}
        assert d.value("probe_tls_cert_expiry_timestamp_seconds", probe="untrusted") is None


# -- 11. Retry-After bounds and refusal --------------------------------------------------------


async def test_retry_after_is_capped_at_an_hour(
    echo: EchoTarget, start_daemon: StartDaemon, events: list[EventDict]
) -> None:
    echo.refuse_upgrades(503, retry_after=30 * 86400)
    d = await start_daemon(config(probes(probe_yaml(echo.url))))
    await wait_until(lambda: len(named(events, "connect failed")) >= 1, what="refusal")
    (failed,) = named(events, "connect failed")
    assert failed["reason"] == "http_503"
    assert failed["retry_in_s"] == 3600.0
    assert connect_errors(d, "http_503") == 1


async def test_zero_retry_after_does_not_bypass_the_backoff_floor(
    echo: EchoTarget, start_daemon: StartDaemon, events: list[EventDict]
) -> None:
    echo.refuse_upgrades(429, retry_after=0)
    d = await start_daemon(
        config(probes(probe_yaml(echo.url, connection="{reconnect: {initial: 200ms, max: 200ms}}")))
    )
    seen = await times_of_increments(lambda: echo.upgrades, 4, within=10)
    for gap in gaps(seen):
        assert gap >= 0.2 - EARLY, f"upgrade attempts {gap:.3f}s apart"
    assert {e["retry_in_s"] for e in named(events, "connect failed")} == {0.2}
    assert connect_errors(d, "http_429") >= 4


async def test_retry_after_as_an_http_date(
    start_daemon: StartDaemon, events: list[EventDict]
) -> None:
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        when = formatdate(time.time() + 3, usegmt=True)
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: " + when.encode() + b"\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        await read_to_eof(reader)

    async with RawServer(busy) as server:
        d = await start_daemon(config(probes(probe_yaml(server.url()))))
        await wait_until(lambda: connect_errors(d, "http_503") >= 1, what="refusal")
        failed = named(events, "connect failed")[0]
        # An HTTP date has whole seconds: 3 s ahead reads as 2 to 3 s from now.
        assert 1.0 <= failed["retry_in_s"] <= 3.0


async def test_refused_connections_then_heal(
    echo: EchoTarget, proxy: FaultProxy, start_daemon: StartDaemon
) -> None:
    d = await start_daemon(
        config(
            probes(probe_yaml(via(proxy), connection="{reconnect: {initial: 100ms, max: 300ms}}"))
        )
    )
    await wait_until(lambda: up(d), what="session up")
    proxy.refuse()
    proxy.reset()
    await wait_until(lambda: connect_errors(d, "refused") >= 2, what="refused")
    assert disconnects(d, "reset") == 1
    assert not up(d)

    proxy.heal()
    await wait_until(lambda: up(d) and reconnects(d) == 1, what="back after heal")
    assert all_disconnects(d) == 1
    # Loss to usable again spans the refused attempts and their backoff.
    assert d.count("probe_reconnect_duration_seconds_sum", probe="p") >= 0.2 - EARLY
