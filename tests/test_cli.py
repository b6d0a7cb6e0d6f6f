"""The real CLI as a subprocess: exit codes, signals, reload, one-shot, and secrets in output."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.server import ServerConnection, serve

from probed.targets.echo import EchoTarget
from tests.conftest import bound, wait_until

CANARY = "canary-s3cr3t-7f3a"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def probe_config(url: str, names: tuple[str, ...] = ("a",), interval: str = "100ms") -> str:
    body = "".join(
        f"""  - name: {n}
    kind: echo
    url: {url}
    interval: {interval}
    timeout: 1s
"""
        for n in names
    )
    return f"probes:\n{body}"


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "probed",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), bound(60))
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Daemon:
    """`probed run` in a subprocess, its JSON log lines collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.url = ""
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            text = line.decode()
            self.raw.append(text)
            try:
                event = json.loads(text)
            except ValueError:
                continue
            self.events.append(event)
            if event.get("event") == "probed started":
                self.url = event["listen"]

    def seen(self, event: str, **fields: Any) -> int:
        return sum(
            1
            for e in self.events
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        )

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/metrics") as resp:
            return await resp.text()

    async def wait_exit(self) -> int:
        code = await asyncio.wait_for(self.proc.wait(), bound(10))
        await self._reader
        return code


@pytest.fixture
async def run_daemon() -> AsyncIterator[Any]:
    procs: list[Daemon] = []

    async def start(config: Path, env: dict[str, str] | None = None) -> Daemon:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "probed",
            "run",
            "-c",
            str(config),
            "--listen",
            "127.0.0.1:0",
            "--web.enable-lifecycle",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        daemon = Daemon(proc)
        procs.append(daemon)
        await wait_until(lambda: daemon.url or proc.returncode is not None, what="daemon start")
        assert daemon.url, "".join(daemon.raw)
        return daemon

    yield start
    for d in procs:
        if d.proc.returncode is None:
            d.proc.kill()
            await d.proc.wait()


def metric(text: str, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def test_sigterm_closes_sessions_with_1001_and_exits_0(
    tmp_path: Path, echo: EchoTarget, run_daemon: Any
) -> None:
    d = await run_daemon(write(tmp_path / "c.yaml", probe_config(echo.url)))
    await wait_until(lambda: d.seen("session up") >= 1 and echo.sessions == 1)
    stopping = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert await d.wait_exit() == 0
    assert time.monotonic() - stopping < bound(5)
    assert d.seen("stopped") == 1
    await wait_until(lambda: echo.sessions == 0, what="target saw the session close")
    assert list(echo.close_codes) == [1001]


async def test_reload_keeps_unchanged_probes_and_survives_bad_files(
    tmp_path: Path, echo: EchoTarget, run_daemon: Any
) -> None:
    path = write(tmp_path / "c.yaml", probe_config(echo.url, ("a", "b")))
    d = await run_daemon(path)
    await wait_until(lambda: d.seen("session up") >= 2, what="both sessions")
    upgrades = echo.upgrades

    # b changes, c appears, a stays: only b and c dial.
    text = probe_config(echo.url, ("a",)) + probe_config(echo.url, ("b", "c"), "200ms").replace(
        "probes:\n", ""
    )
    write(path, text)
    d.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: d.seen("config reloaded") == 1)
    reloaded = next(e for e in d.events if e["event"] == "config reloaded")
    assert (reloaded["kept"], reloaded["restarted"], reloaded["started"]) == (1, 1, 1)
    await wait_until(lambda: echo.upgrades == upgrades + 2, what="b and c reconnect")
    assert d.seen("session up", probe="a") == 1

    # A broken file: kept running, flagged in metrics, reason logged with the line.
    write(path, text + "  - name: d\n    kind: echo\n    intervall: 1s\n")
    async with aiohttp.ClientSession() as http, http.post(f"{d.url}/-/reload") as resp:
        assert resp.status == 500
        body = await resp.text()
    assert "intervall" in body
    assert "c.yaml:19: probes[3].intervall" in body
    page = await d.metrics()
    assert metric(page, "probed_config_last_reload_successful") == 0
    assert metric(page, "probe_connections_open", probe="a") == 1
    assert d.seen("reload failed; keeping the running config") == 1

    write(path, text)
    d.proc.send_signal(signal.SIGHUP)
    await wait_until(lambda: d.seen("config reloaded") == 2)
    assert metric(await d.metrics(), "probed_config_last_reload_successful") == 1
    d.proc.send_signal(signal.SIGTERM)
    assert await d.wait_exit() == 0


async def test_check_reports_every_error_with_its_line(tmp_path: Path) -> None:
    bad = write(
        tmp_path / "bad.yaml",
        "probes:\n"
        "  - name: x\n"
        "    kind: echo\n"
        "    url: ws://127.0.0.1:1/\n"
        "    interval: 5\n"
        "    colour: blue\n",
    )
    code, _out, err = await cli("check", "-c", str(bad))
    assert code == 1
    assert "bad.yaml:5:" in err and "probes[0].interval" in err
    assert "bad.yaml:6:" in err and "colour" in err

    good = write(tmp_path / "good.yaml", probe_config("ws://127.0.0.1:1/"))
    code, out, _err = await cli("check", "-c", str(good))
    assert code == 0 and "OK" in out

    code, out, _err = await cli("check", "--schema")
    assert code == 0 and "echo" in json.loads(out)["$defs"].__repr__()

    code, _out, err = await cli("check", "-c", str(tmp_path / "missing.yaml"))
    assert code == 1 and "missing.yaml" in err


async def test_once_prints_a_timeline_and_sets_the_exit_code(
    tmp_path: Path, echo: EchoTarget
) -> None:
    ok = write(tmp_path / "ok.yaml", probe_config(echo.url))
    code, out, _ = await cli("once", "-c", str(ok))
    assert code == 0, out
    timeline, table, verdict = out.strip().split("\n\n")
    steps = [line.split()[1] for line in timeline.splitlines()[1:-1]]
    assert steps == ["connected", "sent", "reply", "session"], timeline
    assert timeline.splitlines()[-1].strip() == "= OK"
    header, row = table.splitlines()
    assert header.split()[:6] == ["probe", "kind", "result", "connect", "latency", "SLO"]
    assert row.split()[:3] == ["a", "echo", "ok"]
    assert verdict == "1 of 1 probe(s) passed"

    dead = write(tmp_path / "dead.yaml", probe_config("ws://127.0.0.1:1/ws"))
    code, out, _ = await cli("once", "-c", str(dead))
    assert code == 1
    assert "FAILED: connect failed: refused" in out

    # Both at once, for machines: one JSON document on stdout, logs (if asked for) on stderr.
    both = write(
        tmp_path / "both.yaml",
        probe_config(echo.url, ("up",)) + probe_config("ws://127.0.0.1:1/ws", ("down",))[8:],
    )
    code, out, err = await cli("once", "-c", str(both), "--json", "--log-level", "info")
    assert code == 1
    doc = json.loads(out)
    assert doc["ok"] is False
    up, down = doc["probes"]
    assert (up["name"], up["ok"], down["name"], down["ok"]) == ("up", True, "down", False)
    assert up["latency_s"] > 0 and up["connect_s"] > 0
    assert [s["what"] for s in up["cycles"][0]["steps"]][:3] == ["connected", "sent", "reply"]
    assert down["why"].startswith("connect failed: refused")
    assert '"event": "probing"' in err


async def test_secrets_never_reach_logs_or_metrics(
    tmp_path: Path, echo: EchoTarget, run_daemon: Any
) -> None:
    token_file = write(tmp_path / "token", f"{CANARY}-file\n")
    path = write(
        tmp_path / "c.yaml",
        f"""probes:
  - name: s
    kind: echo
    url: {echo.url}?key={CANARY}-query
    headers: {{X-Api-Key: "${{PROBE_KEY}}"}}
    bearer_token_file: {token_file}
    interval: 100ms
    timeout: 1s
""",
    )
    env = {"PROBE_KEY": f"{CANARY}-env"}
    d = await run_daemon(path, env)
    await wait_until(lambda: d.seen("session up") >= 1)
    echo.close_all(1011, "going down")
    await wait_until(lambda: d.seen("session up") >= 2, what="a reconnect")
    page = await d.metrics()
    code, once_out, once_err = await cli(
        "--log-format", "console", "once", "-c", str(path), env=env
    )
    d.proc.send_signal(signal.SIGTERM)
    await d.wait_exit()
    everything = "".join(d.raw) + page + once_out + once_err
    assert CANARY not in everything
    assert code == 0
    assert 'target="ws://127.0.0.1:' in page


async def test_run_refuses_a_bad_config_and_a_busy_port(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "probes:\n  - name: x\n    kind: websockt\n")
    code, _out, err = await cli("run", "-c", str(bad))
    assert code == 1
    assert "bad.yaml:3: probes[0].kind" in err and "known kinds: echo" in err

    good = write(tmp_path / "good.yaml", probe_config("ws://127.0.0.1:1/"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _out, err = await cli("run", "-c", str(good), "--listen", f"127.0.0.1:{port}")
    assert code == 1 and "cannot listen" in err

    code, _out, err = await cli("run", "-c", str(good), "--listen", "nonsense")
    assert code == 2 and "--listen" in err


async def test_tells_systemd_ready_reloading_and_stopping(
    tmp_path: Path, echo: EchoTarget, run_daemon: Any
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    states: list[str] = []

    def drain() -> list[str]:
        while True:
            try:
                state = notify.recv(4096).decode()
            except BlockingIOError:
                return states
            # The status line and watchdog keep-alives come on their own schedule.
            if not state.startswith(("STATUS=", "WATCHDOG=")):
                states.append(state)

    try:
        path = write(tmp_path / "c.yaml", probe_config(echo.url))
        d = await run_daemon(path, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        await wait_until(lambda: "READY=1" in drain(), what="READY=1")
        d.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: drain().count("READY=1") == 2, what="READY=1 after reload")
        d.proc.send_signal(signal.SIGTERM)
        assert await d.wait_exit() == 0
        got = [state.split("\n")[0] for state in drain()]
        assert got == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
        assert states[1].split("\n")[1].startswith("MONOTONIC_USEC=")
    finally:
        notify.close()


async def test_once_says_how_the_server_closed_the_session(tmp_path: Path) -> None:
    # A server that wants a join first and closes on anything else, quoting our token back.
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        auth = ws.request.headers.get("Authorization", "") if ws.request else ""
        await ws.close(4001, f"join first ({auth})")

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        path = write(
            tmp_path / "c.yaml",
            probe_config(f"ws://127.0.0.1:{port}/") + f"    bearer_token: {CANARY}\n",
        )
        code, out, err = await cli("once", "-c", str(path), "--json")
        human_code, human, human_err = await cli("once", "-c", str(path))
    assert code == human_code == 1
    (probe,) = json.loads(out)["probes"]
    (cycle,) = probe["cycles"]
    assert cycle["close_code"] == 4001
    assert cycle["close_reason"].startswith("join first")
    assert probe["why"].startswith("server closed the session: 4001 'join first")
    assert "FAILED: server closed the session: 4001 'join first (<redacted>)'" in human
    assert CANARY not in out + err + human + human_err


async def test_check_and_run_load_no_reference_targets(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", probe_config("ws://127.0.0.1:1/"))
    script = (
        "import sys; from probed.cli import main; main(sys.argv[1:]);"
        "print(' '.join(sorted(sys.modules)))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, "check", "-c", str(path), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    loaded = set(out.decode().split("\n")[-2].split())
    assert "probed.config" in loaded
    assert not {m for m in loaded if m.startswith("probed.targets")}
    assert "aiohttp.web" not in loaded and "probed.metrics" not in loaded
    assert "prometheus_client" not in loaded and "probed.probes.echo" not in loaded
    # The daemon's modules load no target either (the demo and `target` are the only users).
    import_daemon = "import sys, probed.daemon, probed.kinds; print(' '.join(sorted(sys.modules)))"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", import_daemon, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert not {m for m in out.decode().split() if m.startswith("probed.targets")}
