"""The systemd unit: verified and scored by systemd-analyze; sd_notify and the watchdog for real."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from probed import watchdog
from probed.targets.echo import EchoTarget
from tests.conftest import RunningDaemon, bound, config, wait_until

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "probed.service"
MAX_EXPOSURE = 1.5


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (tests/run.sh installs Debian's systemd)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.fixture
def installed_unit(tmp_path: Path) -> Path:
    """The unit as installed into a venv here: only the install prefix differs."""
    probed = Path(sys.prefix) / "bin" / "probed"
    assert probed.exists(), "the probed console script is missing from the venv"
    unit = tmp_path / "probed.service"
    unit.write_text(UNIT.read_text().replace("/opt/probed/bin/probed", str(probed)))
    return unit


def test_unit_passes_systemd_analyze_verify(installed_unit: Path) -> None:
    result = systemd_analyze("verify", str(installed_unit))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "probed.service" not in result.stderr, result.stderr


def test_unit_exposure_is_at_most_one_and_a_half() -> None:
    result = systemd_analyze("security", "--offline=true", "--no-pager", str(UNIT))
    match = re.search(r"Overall exposure level for probed\.service: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    print(f"systemd-analyze security --offline=true: exposure {score}")
    assert score <= MAX_EXPOSURE, result.stdout


def test_unit_is_notify_with_watchdog_reload_and_credentials() -> None:
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"]
    assert d["WatchdogSec"] and d["DynamicUser"] == ["yes"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert any(cred.startswith("chat-token:") for cred in d["LoadCredential"])
    assert "--config.file=/etc/probed/probed.yaml" in d["ExecStart"][0]
    # Hiding /proc/stat would silently drop every process_* metric (no boot time, no collector).
    assert "ProcSubset" not in d


async def test_example_config_reads_its_secret_from_the_credentials_directory(
    tmp_path: Path,
) -> None:
    (tmp_path / "chat-token").write_text("s3cret-token\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "probed",
        "check",
        "-c",
        str(ROOT / "systemd" / "probed.yaml"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "CREDENTIALS_DIRECTORY": str(tmp_path)},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), bound(30))
    assert proc.returncode == 0, out.decode()
    assert b"s3cret" not in out


def test_watchdog_timeout_is_only_for_the_process_it_names() -> None:
    pid = str(os.getpid())
    assert watchdog.watchdog_timeout({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 30.0
    assert watchdog.watchdog_timeout({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog.watchdog_timeout({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog.watchdog_timeout({"WATCHDOG_USEC": "0"}) is None
    assert watchdog.watchdog_timeout({}) is None
    assert watchdog.feed_period(30.0) == 10.0 and watchdog.feed_period(1.0) == 0.5


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()


def drain(sock: socket.socket) -> list[str]:
    got = []
    while True:
        try:
            got.append(sock.recv(4096).decode())
        except BlockingIOError:
            return got


async def test_daemon_feeds_the_watchdog_and_reports_status(
    notify_socket: tuple[str, socket.socket], echo: EchoTarget, tmp_path: Path
) -> None:
    path, sock = notify_socket
    cfg = tmp_path / "probed.yaml"
    cfg.write_text(f"probes:\n  - {{name: a, kind: echo, url: '{echo.url}', interval: 100ms}}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "probed",
        "run",
        "-c",
        str(cfg),
        "--web.listen-address",
        "127.0.0.1:0",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"},
    )
    seen: list[str] = []
    try:

        def fed() -> bool:
            seen.extend(drain(sock))
            keepalives = sum(s.startswith("WATCHDOG=1") for s in seen)
            return keepalives >= 3 and any("1 probes, 1 up" in s for s in seen)

        await wait_until(fed, within=20, what="watchdog keep-alives and a status line")
        assert "READY=1" in seen
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), bound(10)) == 0


async def test_a_stalled_event_loop_starves_the_watchdog(
    notify_socket: tuple[str, socket.socket],
    echo: EchoTarget,
    start_daemon: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a keep-alive every 50 ms
    assert callable(start_daemon)
    d: RunningDaemon = await start_daemon(
        config(f"probes:\n  - {{name: a, kind: echo, url: '{echo.url}'}}\n")
    )
    assert d.daemon.ready.is_set()
    await wait_until(lambda: any(s.startswith("WATCHDOG=1") for s in drain(sock)))
    drain(sock)
    # Block the event loop as a runaway callback would: a thread would keep feeding; the loop
    # cannot, so systemd would see the silence and restart the service.
    time.sleep(0.5)  # noqa: ASYNC251 - the stall is the point of this test
    assert not [s for s in drain(sock) if s.startswith("WATCHDOG=1")]
    await wait_until(lambda: any(s.startswith("WATCHDOG=1") for s in drain(sock)))
