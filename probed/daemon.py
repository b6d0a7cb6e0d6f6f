"""The supervisor: one task per probe in one TaskGroup, signals, reload, systemd notification.

A probe that crashes is logged, counted and restarted with backoff while the others keep running.
A reload keeps every probe whose config did not change untouched, sessions and all.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import signal
import socket
import time
from pathlib import Path

from aiohttp import web

from probed import fdtable, gcpolicy, kinds, logs, watchdog
from probed.config import Config, ConfigError, ProbeConfig
from probed.http import HttpServer, start_http
from probed.httpguard import HttpLimits
from probed.metrics import DaemonMetrics, Exposition, ProbeMetrics
from probed.ratelimit import LogLimiter, log_limited
from probed.reload_parse import Fingerprints, fingerprints_of, parse_reload
from probed.selfmon import LagMonitor
from probed.sharding import Shard
from probed.status import HistoryLimits, set_history_limits
from probed.statuspage import add_routes
from probed.webconfig import WebConfig

_RESTART_INITIAL = 1.0
_RESTART_MAX = 60.0
# A probe that ran this long before crashing starts its restart backoff afresh.
_RESTART_RESET_AFTER = 60.0


class ApplyFailed(Exception):
    """A config that validated could not be put into effect (a worker process did not take it)."""


def sd_notify(state: str) -> None:
    """Tell systemd about a state change (Type=notify); a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.sendto(state.encode(), address)


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        listen: str | None = None,
        log_level: str | None = None,
        shard: Shard | None = None,
        enable_lifecycle: bool = False,
        http_limits: HttpLimits | None = None,
        web_config: WebConfig | None = None,
    ) -> None:
        self.config = config
        self._log_level_override = log_level
        self.shard = shard
        # POST /-/reload: off unless asked for, as in Prometheus; SIGHUP always reloads.
        self.enable_lifecycle = enable_lifecycle
        self.http_limits = http_limits or HttpLimits()
        # TLS and basic auth for the HTTP endpoint (--web.config.file); read once at start.
        self.web_config = web_config
        # Config files actually read by reloads (requests are coalesced; this counts the work).
        self.reloads = 0
        self._path = config_path
        self._listen_override = listen
        self.listen = listen or config.global_.listen
        self.metrics = DaemonMetrics()
        self.metrics.config_loaded(True)
        self.exposition = Exposition(self.metrics)
        self.exposition.labels = dict(config.global_.labels)
        self.lag = LagMonitor(
            config.global_.loop_lag_threshold, observe=self.metrics.loop_lag.observe
        )
        self.ready = asyncio.Event()
        self.bound: tuple[str, int] | None = None
        self.http: HttpServer | None = None
        self._running: dict[str, tuple[ProbeConfig, asyncio.Task[None]]] = {}
        self._stop = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._log = logs.get(component="daemon")
        self._limiter = LogLimiter()
        self._next_reload: asyncio.Future[tuple[bool, str]] | None = None
        self._reloader: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[tuple[bool, str]]] = set()
        # Each probe's config and its fingerprint, for the process that parses a reload.
        self._fingerprints: Fingerprints = {}

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, handle_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self.metrics.running_on(
            "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
        )
        if handle_signals:
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self.http, self.bound = await self._serve()
        runner = self.http
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                lag = tg.create_task(self.lag.run())
                gcpolicy.starting()  # until freeze_when_settled: no full passes over the fleet
                # Before any probe runs: a reload then compares by fingerprint and never pays
                # for the whole fleet's on the loop.
                self._fingerprints = fingerprints_of(self.config, self._fingerprints)
                fdtable.reserve(self.config.sessions)
                await self._install(self.config)
                gcpolicy.installed()
                settle = max((p.stagger for p in self.config.probes), default=0.0) + 2.0
                frozen = tg.create_task(
                    gcpolicy.freeze_when_settled(settle, probes=len(self._running))
                )
                self.ready.set()
                sd_notify("READY=1")
                feeder = tg.create_task(watchdog.feed(sd_notify, self.status_line))
                self._log.info(
                    "probed started",
                    listen=f"http://{self.bound[0]}:{self.bound[1]}",
                    probes=self.probe_count(),
                )
                self._warn_if_empty(self.config)
                await self._stop.wait()
                sd_notify("STOPPING=1")
                self.ready.clear()
                self._log.info("stopping: closing sessions")
                lag.cancel()
                frozen.cancel()
                feeder.cancel()
                for name in list(self._running):
                    self._stop_probe(name)
        finally:
            for task in [self._reloader, *self._background]:
                if task is not None:
                    task.cancel()
            gc.unfreeze()  # hand the heap back whole to whoever embeds the daemon (tests)
            gc.enable()
            await runner.cleanup()
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
        self._log.info("stopped")

    def stop(self) -> None:
        self._stop.set()

    # Overridden by the worker processes of `--workers N` (probed/workers/): where the HTTP face
    # listens, how a config is put into effect, and what the status page reads.

    async def _serve(self) -> tuple[HttpServer, tuple[str, int]]:
        return await start_http(self, self.listen, self.http_limits)

    async def _install(self, config: Config) -> dict[str, list[str]]:
        return self._apply(config)

    def add_status_routes(self, app: web.Application) -> None:
        add_routes(app, self)

    def probe_count(self) -> int:
        return len(self._running)

    def health(self) -> tuple[bool, str]:
        return True, "probed is healthy\n"

    def status_line(self) -> str:
        """One line for `systemctl status`: what runs here and how much of it is up."""
        running = self.exposition.probes()
        up = sum(1 for p in running if p.status.up)
        shard = "" if self.shard is None else f", shard {self.shard}"
        return f"{len(running)} probes, {up} up{shard}"

    # -- reload --------------------------------------------------------------------------------

    def request_reload(self) -> None:
        """SIGHUP: reload in the background (coalesced with any reload already asked for)."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def reload(self) -> tuple[bool, str]:
        """Re-read the config file; on error keep running as before and say why.

        Requests are coalesced: one reload runs at a time, and every request that arrives while
        it runs is answered by the single reload that starts after it (which reads the file as
        it is then), so 200 SIGHUPs in a second cost two reloads, not 200.
        """
        if self._next_reload is None:
            self._next_reload = asyncio.get_running_loop().create_future()
            if self._reloader is None or self._reloader.done():
                self._reloader = asyncio.create_task(self._reload_loop())
        return await asyncio.shield(self._next_reload)

    async def _reload_loop(self) -> None:
        while self._next_reload is not None:
            answer, self._next_reload = self._next_reload, None
            try:
                result = await self._reload_once()
            except asyncio.CancelledError:
                answer.set_result((False, "probed is stopping"))
                raise
            except Exception as exc:  # never leave a caller (or systemd) waiting
                self._log.exception("reload failed unexpectedly")
                result = False, f"reload failed: {type(exc).__name__}"
            answer.set_result(result)

    async def _reload_once(self) -> tuple[bool, str]:
        if self._path is None:
            return self._refuse_reload("no config file (the daemon runs an embedded config)")
        if not self.ready.is_set():
            return self._refuse_reload("probed is starting or stopping; try again")
        # systemd (Type=notify-reload) wants the monotonic time the reload started with it.
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        ok = False
        try:
            running = self._fingerprints = fingerprints_of(self.config, self._fingerprints)
            with gcpolicy.held_off():
                try:
                    # Reading and validating a large config is CPU work: in a child process
                    # (probed/reload_parse.py), so that it neither stalls sessions nor taints
                    # their measurements; the loop gets back only what changed.
                    self.reloads += 1
                    config, prints = await parse_reload(self._path, running)
                    if not self.ready.is_set():
                        return self._refuse_reload("probed is stopping")
                except ConfigError as exc:
                    self._log.error(
                        "reload failed; keeping the running config", errors=exc.lines()[:50]
                    )
                    return False, str(exc)
                self._fingerprints = prints
                try:
                    changes = await self._install(config)
                except ApplyFailed as exc:
                    self._log.error("reload failed", why=str(exc))
                    return False, str(exc)
            ok = True
        finally:
            # Whatever happened, the gauge says so and systemd hears READY again.
            self.metrics.config_loaded(ok)
            sd_notify("READY=1")
        # Counts for dashboards and alerts on log volume, names for the person reading.
        log_limited(
            self._limiter,
            self._log,
            "info",
            "config reloaded",
            **{k: len(v) for k, v in changes.items()},
            **{f"{k}_probes": v for k, v in changes.items() if v and k != "kept"},
        )
        self._warn_if_empty(config)
        return True, ", ".join(
            f"{k}: {len(v)}" + (f" ({', '.join(v)})" if v and k != "kept" else "")
            for k, v in changes.items()
        )

    def _warn_if_empty(self, config: Config) -> None:
        if not config.probes:
            self._log.warning(
                "the config has no probes: nothing is being measured",
                config=str(self._path) if self._path else None,
            )

    def _refuse_reload(self, why: str) -> tuple[bool, str]:
        self._log.warning("reload refused", why=why)
        return False, why

    def _apply(self, config: Config) -> dict[str, list[str]]:
        self._apply_global(config)
        mine = config.probes if self.shard is None else self.shard.select(config.probes)
        wanted = {p.name: p for p in mine}
        set_history_limits(HistoryLimits.for_probes(len(wanted)))
        self.lag.probes = len(wanted)
        changes: dict[str, list[str]] = {"kept": [], "started": [], "restarted": [], "stopped": []}
        for name in list(self._running):
            if name not in wanted:
                self._stop_probe(name)
                changes["stopped"].append(name)
        for name, cfg in wanted.items():
            current = self._running.get(name)
            if current is not None and (current[0] is cfg or current[0] == cfg):
                changes["kept"].append(name)
                continue
            if current is not None:
                self._stop_probe(name)
                changes["restarted"].append(name)
            else:
                changes["started"].append(name)
            self._start_probe(cfg)
        self.config = config
        return changes

    def running_configs(self) -> dict[str, ProbeConfig]:
        return {name: cfg for name, (cfg, _task) in self._running.items()}

    def _apply_global(self, config: Config) -> None:
        g = config.global_
        logs.set_level(self._log_level_override or g.log_level)
        self.exposition.labels = dict(g.labels)
        self.lag.threshold = g.loop_lag_threshold
        if self._listen_override is None and g.listen != self.listen:
            self._log.warning(
                "global.listen changed; restart probed to move the HTTP server",
                running=self.listen,
                configured=g.listen,
            )

    # -- probes --------------------------------------------------------------------------------

    def _start_probe(self, cfg: ProbeConfig) -> None:
        assert self._tg is not None
        metrics = kinds.new_metrics(cfg, self.lag.tainted)
        self.exposition.add(metrics)
        task = self._tg.create_task(self._supervise(cfg, metrics), name=f"probe:{cfg.name}")
        self._running[cfg.name] = (cfg, task)

    def _stop_probe(self, name: str) -> None:
        _cfg, task = self._running.pop(name)
        task.cancel()
        self.exposition.remove(name)

    async def _supervise(self, cfg: ProbeConfig, metrics: ProbeMetrics) -> None:
        loop = asyncio.get_running_loop()
        log = logs.get(probe=cfg.name, kind=cfg.kind)
        # Built before the stagger, so that the probe's families are exported from the start.
        probe: kinds.Probe | None = None
        with contextlib.suppress(Exception):  # a failing build is retried, and logged, below
            probe = kinds.build(cfg, metrics, log)
        # Stagger starts so a thousand probes do not dial in the same millisecond.
        await asyncio.sleep(random.uniform(0, cfg.stagger))
        delay = _RESTART_INITIAL
        while True:
            started = loop.time()
            try:
                if probe is None:
                    probe = kinds.build(cfg, metrics, log)
                await probe.run()
            except Exception:
                probe = None
                if loop.time() - started > _RESTART_RESET_AFTER:
                    delay = _RESTART_INITIAL
                metrics.restarts.inc()
                metrics.status.error("probe crashed", "crash")
                log.exception("probe crashed; restarting", restart_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RESTART_MAX)
