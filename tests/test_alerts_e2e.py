"""From breach to page, with the real programs: probed -> Prometheus -> Alertmanager -> webhook.

A real probed (subprocess) probes a reference echo target through a fault-injecting proxy. A real
Prometheus scrapes it every second and evaluates the shipped rules rendered with windows of
seconds; a real Alertmanager, configured with the shipped example's inhibit rules, posts to a
webhook served by this test. The test slows the path above the SLO, then cuts it, then heals it,
and follows each alert from Prometheus to the webhook and back to resolved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from probed import alert_rules
from probed.targets.echo import EchoTarget
from probed.targets.proxy import FaultProxy
from tests.conftest import bound
from tests.test_rules import SHORT

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def _free_port() -> int:
    # Prometheus and Alertmanager cannot report a port they picked, so one is chosen here; the
    # window between closing and their bind is tiny and only loopback is involved.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not installed: run the README test command (tests/run.sh)")
    return path


@dataclass
class Webhook:
    """Alertmanager's notifications as they arrive: (monotonic time, status, labels)."""

    seen: list[tuple[float, str, dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        now = time.monotonic()
        for alert in body["alerts"]:
            self.seen.append((now, alert["status"], alert["labels"]))
        return web.Response(text="ok")

    def first(self, status: str, alertname: str, after: float, probe: str = "chat") -> float | None:
        for when, got_status, labels in self.seen:
            if (
                got_status == status
                and labels["alertname"] == alertname
                and labels.get("probe") == probe
                and when >= after
            ):
                return when
        return None


@dataclass
class Stack:
    echo: EchoTarget
    proxy: FaultProxy
    prometheus: str
    alertmanager: str
    webhook: Webhook

    async def alerts(self) -> dict[str, str]:
        """alertname -> state (pending/firing) in Prometheus right now."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.prometheus}/api/v1/alerts") as resp,
        ):
            data = await resp.json()
        return {a["labels"]["alertname"]: a["state"] for a in data["data"]["alerts"]}

    async def until(self, what: str, check: Callable[[], Awaitable[bool]], within: float) -> float:
        deadline = time.monotonic() + bound(within)
        while not await check():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {bound(within)}s waiting for {what}; webhook saw "
                    f"{self.webhook.seen}"
                )
            await asyncio.sleep(0.2)  # polling an external program: its state has no event
        return time.monotonic()

    async def post_alerts(self, *labels: dict[str, str]) -> None:
        """Alerts straight into Alertmanager's API, as Prometheus would send them."""
        body = [{"labels": {"job": "probed", **one}, "annotations": {}} for one in labels]
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.alertmanager}/api/v2/alerts", json=body) as resp,
        ):
            assert resp.status == 200, await resp.text()

    async def firing_in_prometheus(self, alertname: str, within: float = 30) -> float:
        async def check() -> bool:
            return (await self.alerts()).get(alertname) == "firing"

        return await self.until(f"{alertname} firing in Prometheus", check, within)

    async def at_webhook(
        self, status: str, alertname: str, after: float, within: float = 30, probe: str = "chat"
    ) -> float:
        async def check() -> bool:
            return self.webhook.first(status, alertname, after, probe) is not None

        await self.until(f"{alertname} {status} at the webhook", check, within)
        when = self.webhook.first(status, alertname, after, probe)
        assert when is not None
        return when


async def _start(*argv: str, log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def _http_ok(url: str, within: float, proc: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + bound(within)
    async with aiohttp.ClientSession() as http:
        while True:
            if proc.returncode is not None:
                raise AssertionError(f"{url} exited early:\n{_tail(log)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} not ready:\n{_tail(log)}")
            await asyncio.sleep(0.1)


def _alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """The shipped example, with its inhibitions, pointed at the test webhook with short waits."""
    config: dict[str, Any] = yaml.safe_load(
        (ROOT / "deploy/prometheus/alertmanager.yml").read_text()
    )
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    for receiver in config["receivers"]:
        receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
    return config


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    prometheus_bin = _binary("prometheus")
    alertmanager_bin = _binary("prometheus-alertmanager")
    procs: list[asyncio.subprocess.Process] = []
    drains: list[asyncio.Task[bytes]] = []
    hook = Webhook()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook_port = runner.addresses[0][1]

    async with EchoTarget() as echo:
        proxy = FaultProxy("127.0.0.1", echo.port)
        await proxy.start()
        try:
            probed_cfg = tmp_path / "probed.yaml"
            probed_cfg.write_text(
                f"""
global:
  listen: 127.0.0.1:0
  labels: {{location: e2e}}
probes:
  - name: chat
    kind: echo
    url: ws://127.0.0.1:{proxy.port}/ws
    interval: 50ms
    timeout: 1s
    connection:
      connect_timeout: 1s
      reconnect: {{initial: 100ms, max: 500ms}}
    slo: {{latency: 50ms}}
"""
            )
            probed = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "probed",
                "run",
                "--config.file",
                str(probed_cfg),
                "--log.format",
                "json",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            procs.append(probed)
            assert probed.stdout is not None
            listen = ""
            async with asyncio.timeout(bound(30)):
                while not listen:
                    line = await probed.stdout.readline()
                    assert line, "probed exited before it started"
                    with contextlib.suppress(ValueError):
                        listen = json.loads(line).get("listen", "")
            # Keep draining its log so a full pipe never blocks the daemon.
            drains.append(asyncio.create_task(probed.stdout.read()))

            am_port, prom_port = _free_port(), _free_port()
            am_cfg = tmp_path / "alertmanager.yml"
            am_cfg.write_text(
                yaml.safe_dump(_alertmanager_config(f"http://127.0.0.1:{hook_port}/hook"))
            )
            am_log = tmp_path / "alertmanager.log"
            am = await _start(
                alertmanager_bin,
                f"--config.file={am_cfg}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",  # no gossip: a single, private instance
                log=am_log,
            )
            procs.append(am)

            rules = tmp_path / "rules.yml"
            rules.write_text(alert_rules.rules_file(SHORT))
            prom_cfg = tmp_path / "prometheus.yml"
            prom_cfg.write_text(
                yaml.safe_dump(
                    {
                        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                        "rule_files": [str(rules)],
                        "alerting": {
                            "alertmanagers": [
                                {"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}
                            ]
                        },
                        "scrape_configs": [
                            {
                                "job_name": "probed",
                                "static_configs": [{"targets": [listen.removeprefix("http://")]}],
                            }
                        ],
                    }
                )
            )
            prom_log = tmp_path / "prometheus.log"
            prom = await _start(
                prometheus_bin,
                f"--config.file={prom_cfg}",
                f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--rules.alert.resend-delay=1s",
                log=prom_log,
            )
            procs.append(prom)
            await _http_ok(f"http://127.0.0.1:{am_port}/-/ready", 30, am, am_log)
            await _http_ok(f"http://127.0.0.1:{prom_port}/-/ready", 30, prom, prom_log)
            yield Stack(
                echo, proxy, f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}", hook
            )
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.terminate()
            for proc in procs:
                try:
                    await asyncio.wait_for(proc.wait(), bound(10))
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            await asyncio.gather(*drains, return_exceptions=True)
            await proxy.stop()
            await runner.cleanup()


async def test_breach_and_outage_page_and_resolve(stack: Stack) -> None:
    # Healthy first: the probe is scraped and nothing fires.
    async def healthy() -> bool:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"{stack.prometheus}/api/v1/query",
                params={"query": 'probe_success{probe="chat"} == 1'},
            ) as resp,
        ):
            return bool((await resp.json())["data"]["result"])

    await stack.until("a healthy scrape", healthy, within=30)

    # The shipped inhibition, in the real Alertmanager: while a daemon reports event-loop lag, its
    # latency pages are held back; the same page from a healthy daemon goes through.
    starved, fine = "10.0.0.1:9464", "10.0.0.2:9464"
    page = {"alertname": "MessageRttSloBreach", "severity": "page", "slo": "message_rtt"}
    t_inhibit = time.monotonic()
    await stack.post_alerts(
        {"alertname": "ProbedEventLoopLag", "severity": "ticket", "instance": starved},
        {**page, "instance": starved, "probe": "starved"},
        {**page, "instance": fine, "probe": "fine"},
    )
    await stack.at_webhook("firing", "MessageRttSloBreach", t_inhibit, probe="fine")
    # A later alert's arrival shows that the notifications posted before it have gone out.
    await stack.post_alerts({**page, "instance": fine, "probe": "later"})
    await stack.at_webhook("firing", "MessageRttSloBreach", t_inhibit, probe="later")
    assert stack.webhook.first("firing", "MessageRttSloBreach", t_inhibit, "starved") is None
    assert any(labels["alertname"] == "ProbedEventLoopLag" for _t, _s, labels in stack.webhook.seen)
    assert "MessageRttSloBreach" not in await stack.alerts()

    # Slow: 100 ms each way puts every round trip over the 50 ms SLO.
    t_slow = time.monotonic()
    stack.proxy.set_latency(0.1)
    breach_prom = await stack.firing_in_prometheus("MessageRttSloBreach")
    breach_hook = await stack.at_webhook("firing", "MessageRttSloBreach", t_slow)
    # Slow is not down: every reply still comes within the probe's timeout.
    assert "ProbeDown" not in await stack.alerts()
    # Every round trip over the SLO burns the budget at 100x: the burn-rate page fires too.
    burn_prom = await stack.firing_in_prometheus("MessageRttErrorBudgetBurn")

    # Down: connections reset and new ones refused.
    t_down = time.monotonic()
    stack.proxy.refuse(True)
    stack.proxy.reset()
    down_prom = await stack.firing_in_prometheus("ProbeDown")
    down_hook = await stack.at_webhook("firing", "ProbeDown", t_down)

    # Healed: both resolve at the webhook.
    t_heal = time.monotonic()
    stack.proxy.heal()
    down_resolved = await stack.at_webhook("resolved", "ProbeDown", t_heal, within=45)
    breach_resolved = await stack.at_webhook("resolved", "MessageRttSloBreach", t_slow, within=45)
    assert stack.webhook.first("firing", "ProbeDown", t_slow) is not None

    print(
        f"\nbreach: firing in Prometheus {breach_prom - t_slow:.1f}s, at webhook "
        f"{breach_hook - t_slow:.1f}s after the slowdown (burn rate firing "
        f"{burn_prom - t_slow:.1f}s); probe down: firing "
        f"{down_prom - t_down:.1f}s, at webhook {down_hook - t_down:.1f}s after the outage; "
        f"resolved at webhook {down_resolved - t_heal:.1f}s (down) and "
        f"{breach_resolved - t_heal:.1f}s (breach) after healing"
    )
