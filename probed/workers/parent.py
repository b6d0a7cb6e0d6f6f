"""The parent of `probed run --workers N`: one HTTP face, one reload, N worker processes.

The parent owns what must exist once: the listener (/metrics, health, reload, status page),
SIGHUP and SIGTERM, systemd's notifications and watchdog, and the config, which it reads and
validates itself so that errors are reported once. It runs no probe. Each worker runs the ordinary
Daemon on the probes rendezvous hashing gives it (probed/workers/plan.py) and answers the parent
on a unix socket in a directory only this user can open; a scrape asks every worker and merges
(probed/workers/merge.py). A worker that dies is started again with backoff and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
import prometheus_client as pc
from aiohttp import web

from probed import logs
from probed.config import Config, ProbeConfig
from probed.daemon import ApplyFailed, Daemon
from probed.exposition import CONTENT_TYPES, Exposition, negotiate
from probed.http import scrape_timeout
from probed.metrics import DaemonMetrics
from probed.reload_parse import Fingerprints, fingerprints_of
from probed.statuspage import NO_PROBES, PAGE_DETAILED, page_frame
from probed.workers.channel import CONFIG_TYPE, READY_LINE, dump_update, frame
from probed.workers.merge import merge
from probed.workers.plan import LIVENESS_TIMEOUT, worker_of

_RESTART_INITIAL: Final = 1.0
_RESTART_MAX: Final = 30.0
_RESTART_RESET_AFTER: Final = 60.0
# A worker has this long to close its sessions (code 1001) after SIGTERM before SIGKILL.
_STOP_GRACE: Final = 15.0
_START_TIMEOUT: Final = 60.0
_APPLY_TIMEOUT: Final = 60.0
# How long a scrape waits for the workers: most of the scraper's own timeout when it says (as
# Prometheus does), so that a stuck worker costs its own series and not the whole scrape; else
# long enough for a worker rendering a few thousand probes on a starved machine.
_SCRAPE_SHARE: Final = 0.8
_SCRAPE_TIMEOUT: Final = 30.0
_API_TIMEOUT: Final = 10.0
# A worker that misses this many health checks in a row, a third of the liveness timeout apart,
# is killed and started again like one that crashed.
_LIVENESS_MISSES: Final = 3
# Passed to no worker: systemd's notifications and watchdog are the parent's alone.
_PARENT_ONLY_ENV: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS")


class WorkerMetrics:
    """The parent's count of its workers, beside its own build, reload and process families."""

    def __init__(self, registry: pc.CollectorRegistry) -> None:
        self.up = pc.Gauge(
            "probed_worker_up",
            "1 if the worker process is running and answered the latest scrape.",
            ["worker"],
            registry=registry,
        )
        self.restarts = pc.Counter(
            "probed_worker_restarts",
            "Worker processes that exited unasked and were started again.",
            ["worker"],
            registry=registry,
        )


class Worker:
    """One worker process: started, watched, restarted with backoff, stopped on request."""

    def __init__(
        self,
        index: int,
        argv: list[str],
        socket_path: str,
        metrics: WorkerMetrics,
        liveness_timeout: float = LIVENESS_TIMEOUT,
    ):
        self.index = index
        self.liveness_timeout = liveness_timeout
        self.name = str(index)
        self.argv = argv
        self.socket_path = socket_path
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = False
        self.restarts = 0
        self.first_outcome = asyncio.Event()
        self._metrics = metrics
        self._http: aiohttp.ClientSession | None = None
        self._log = logs.get(component="workers", worker=index)
        metrics.up.labels(self.name).set(0)
        metrics.restarts.labels(self.name)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path)
            )
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    # -- the process ---------------------------------------------------------------------------

    async def supervise(
        self, config: Callable[[], tuple[Config, Fingerprints]], stopping: asyncio.Event
    ) -> None:
        """Keep the worker running until `stopping` is set; `config()` is what a start gets."""
        loop = asyncio.get_running_loop()
        delay = _RESTART_INITIAL
        while not stopping.is_set():
            started = loop.time()
            try:
                code = await self._run_once(config(), stopping)
            except Exception:  # a spawn that fails (no memory, no descriptors) is retried
                self._log.exception("worker could not be started")
                code = None
            self.ready = False
            self._metrics.up.labels(self.name).set(0)
            self.first_outcome.set()
            if stopping.is_set():
                return
            self.restarts += 1
            self._metrics.restarts.labels(self.name).inc()
            if loop.time() - started > _RESTART_RESET_AFTER:
                delay = _RESTART_INITIAL
            self._log.error("worker exited; starting it again", code=code, restart_in_s=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, _RESTART_MAX)

    async def _run_once(
        self, config: tuple[Config, Fingerprints], stopping: asyncio.Event
    ) -> int | None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        env = {k: v for k, v in os.environ.items() if k not in _PARENT_ONLY_ENV}
        self.proc = proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=_log_stream(),
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(frame(dump_update(*config, {})))
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        exited = asyncio.ensure_future(proc.wait())
        stop = asyncio.ensure_future(stopping.wait())
        hung: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ready_line = asyncio.ensure_future(proc.stdout.readline())
        try:
            done, _ = await asyncio.wait(
                {exited, stop, ready_line}, timeout=_START_TIMEOUT, return_when="FIRST_COMPLETED"
            )
            if ready_line in done and ready_line.result() == READY_LINE:
                self.ready = True
                self._metrics.up.labels(self.name).set(1)
                self._log.info("worker started", pid=proc.pid)
            elif not done:
                self._log.error("worker did not start in time; stopping it", pid=proc.pid)
                await self._terminate(proc)
            self.first_outcome.set()
            hung = asyncio.ensure_future(self._until_unresponsive())
            await asyncio.wait({exited, stop, hung}, return_when="FIRST_COMPLETED")
            if stop.done():
                await self._terminate(proc)
            elif hung.done() and not exited.done():
                self._log.error(
                    "worker stopped answering; killing it",
                    pid=proc.pid,
                    silent_s=self.liveness_timeout,
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            return await proc.wait()
        finally:
            for task in (exited, stop, ready_line, hung):
                task.cancel()
            if proc.returncode is None:  # cancelled: never leave a worker behind
                proc.kill()
                with contextlib.suppress(ProcessLookupError):
                    await asyncio.shield(proc.wait())
            proc.stdin.close()

    async def _until_unresponsive(self) -> None:
        """Returns once the worker has missed `_LIVENESS_MISSES` health checks in a row."""
        every = self.liveness_timeout / _LIVENESS_MISSES
        misses = 0
        while misses < _LIVENESS_MISSES:
            await asyncio.sleep(every)
            answer = await self.get("/-/healthy", within=every)
            misses = 0 if answer is not None else misses + 1
            if misses:
                self._log.warning("worker did not answer a health check", misses=misses)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), _STOP_GRACE)
        except TimeoutError:
            self._log.warning("worker did not stop in time; killing it", pid=proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    # -- requests to the worker ----------------------------------------------------------------

    async def apply(
        self, config: Config, prints: Fingerprints, unchanged: Mapping[str, ProbeConfig]
    ) -> dict[str, list[str]]:
        """Put `config` into effect in the worker, which runs `unchanged` (or says it does not)."""
        answer = await self._post_update(dump_update(config, prints, unchanged))
        if answer.get("stale"):
            # It runs something else than we thought (a start that raced a reload): all of it.
            body = await asyncio.to_thread(dump_update, config, prints, {})
            answer = await self._post_update(body)
        if not answer.get("ok"):
            why = answer.get("why", "it refused")
            raise ApplyFailed(f"worker {self.index} did not apply the config: {why}")
        changes: dict[str, list[str]] = answer["changes"]
        return changes

    async def _post_update(self, body: bytes) -> dict[str, Any]:
        if not self.ready:
            raise ApplyFailed(f"worker {self.index} is not running")
        try:
            async with self.http().post(
                "http://worker/-/apply",
                data=body,
                headers={"Content-Type": CONFIG_TYPE},
                timeout=aiohttp.ClientTimeout(total=_APPLY_TIMEOUT),
            ) as resp:
                answer: dict[str, Any] = await resp.json() if resp.status == 200 else {"ok": False}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApplyFailed(
                f"worker {self.index} did not answer ({type(exc).__name__})"
            ) from None
        return answer

    async def get(
        self, path: str, accept: str = "*/*", within: float = _API_TIMEOUT
    ) -> tuple[int, str, bytes] | None:
        """(status, content type, body) of a GET to the worker, or None if it did not answer."""
        if not self.ready:
            return None
        try:
            async with self.http().get(
                f"http://worker{path}",
                headers={"Accept": accept},
                timeout=aiohttp.ClientTimeout(total=within),
            ) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            return None


def _log_stream() -> int | None:
    # The worker logs to its stderr; make that our stdout, so one stream holds every log line.
    try:
        sys.stdout.flush()
        return sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # stdout replaced (tests capture it)
        return None


class MergedExposition(Exposition):
    """/metrics of the parent: its own families and every worker's, merged per family."""

    def __init__(self, metrics: DaemonMetrics, parent: ParentDaemon) -> None:
        super().__init__(metrics)
        self._parent = parent

    async def scrape(self, accept: str) -> tuple[list[bytes], str]:
        fmt = negotiate(accept)
        content_type = CONTENT_TYPES[fmt]
        workers = self._parent.workers
        told = scrape_timeout.get()
        timeout = _SCRAPE_TIMEOUT if told is None else told * _SCRAPE_SHARE
        answers = await asyncio.gather(*(w.get("/metrics", content_type, timeout) for w in workers))
        bodies: list[tuple[str, bytes]] = []
        for worker, answer in zip(workers, answers, strict=True):
            ok = answer is not None and answer[0] == 200 and answer[1] == content_type
            self._parent.worker_metrics.up.labels(worker.name).set(1 if ok else 0)
            if ok and answer is not None:
                bodies.append((worker.name, answer[2]))
        own = self.render_format(fmt)
        # Splitting a few megabytes at family boundaries: off the loop, whose only job here is
        # to answer (the parent runs no probe whose measurement a pause could spoil).
        parts = await asyncio.to_thread(merge, own, bodies, fmt)
        return parts, content_type


class ParentDaemon(Daemon):
    """The Daemon's HTTP face, signals and reload, with the probes run by worker processes."""

    def __init__(
        self,
        config: Config,
        *,
        workers: int,
        log_format: str = "auto",
        liveness_timeout: float = LIVENESS_TIMEOUT,
        **options: Any,
    ):
        super().__init__(config, **options)
        self.worker_metrics = WorkerMetrics(self.metrics.registry)
        self.exposition = MergedExposition(self.metrics, self)
        try:
            self._dir = tempfile.mkdtemp(prefix="probed-workers-")  # mode 0700: ours alone
        except OSError as exc:
            raise SystemExit(
                f"probed: cannot make a private directory for the workers' sockets in "
                f"{tempfile.gettempdir()} ({exc.strerror}): set TMPDIR to a writable directory "
                "(under Kubernetes, an emptyDir at /tmp) or run with --workers 1"
            ) from None
        # What a worker that starts now is given: the config and every probe's fingerprint.
        self._latest: tuple[Config, Fingerprints] = (config, {})
        shard = (
            ""
            if self.shard is None
            else (f"{self.shard.index}/{self.shard.count}/{self.shard.replicas}")
        )
        self.workers: list[Worker] = []
        for index in range(workers):
            socket_path = str(Path(self._dir) / f"worker-{index}.sock")
            argv = [
                sys.executable,
                "-m",
                "probed.workers.child",
                f"--index={index}",
                f"--count={workers}",
                f"--socket={socket_path}",
                f"--parent={os.getpid()}",
                f"--log-format={log_format}",
            ]
            if shard:
                argv.append(f"--shard={shard}")
            if self._log_level_override:
                argv.append(f"--log-level={self._log_level_override}")
            self.workers.append(
                Worker(index, argv, socket_path, self.worker_metrics, liveness_timeout)
            )
        self._supervisors: list[asyncio.Task[None]] = []

    async def run(self, *, handle_signals: bool = True) -> None:
        try:
            await super().run(handle_signals=handle_signals)
        finally:
            for task in self._supervisors:
                task.cancel()
            for worker in self.workers:
                await worker.close()
            shutil.rmtree(self._dir, ignore_errors=True)

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers if w.pid is not None and w.ready]

    # -- config --------------------------------------------------------------------------------

    def _mine(self, config: Config) -> list[str]:
        probes = config.probes if self.shard is None else self.shard.select(config.probes)
        return [p.name for p in probes]

    async def _install(self, config: Config) -> dict[str, list[str]]:
        self._apply_global(config)
        prints = fingerprints_of(config, self._fingerprints)
        self._latest = (config, prints)
        if not self._supervisors:
            assert self._tg is not None
            for worker in self.workers:
                self._supervisors.append(
                    self._tg.create_task(
                        worker.supervise(lambda: self._latest, self._stop),
                        name=f"worker:{worker.index}",
                    )
                )
            # READY=1 after every worker has started (or failed to: then it is being restarted
            # and shows in /-/healthy), so that systemd's start covers the probes' start.
            await asyncio.gather(*(w.first_outcome.wait() for w in self.workers))
            self.config = config
            return {"started": self._mine(config)}
        unchanged = {p.name: p for p in self.config.probes}
        results = await asyncio.gather(
            *(w.apply(config, prints, unchanged) for w in self.workers), return_exceptions=True
        )
        failures = [str(r) for r in results if isinstance(r, BaseException)]
        if failures:
            # The workers that did apply run the new config, and a restarted worker starts with
            # it; the gauge says the reload failed until one succeeds everywhere.
            raise ApplyFailed("; ".join(failures))
        changes: dict[str, list[str]] = {"kept": [], "started": [], "restarted": [], "stopped": []}
        for result in results:
            assert isinstance(result, dict)
            for key, names in result.items():
                changes.setdefault(key, []).extend(names)
        self.config = config
        return changes

    def probe_count(self) -> int:
        return len(self._mine(self.config))

    def status_line(self) -> str:
        up = sum(w.ready for w in self.workers)
        shard = "" if self.shard is None else f", shard {self.shard}"
        return f"{self.probe_count()} probes over {len(self.workers)} workers, {up} up{shard}"

    def health(self) -> tuple[bool, str]:
        down = [w for w in self.workers if not w.ready]
        if not down:
            return True, f"probed is healthy ({len(self.workers)} workers)\n"
        lines = [f"worker {w.index} is down ({w.restarts} restarts)" for w in down]
        return False, "probed is not healthy: " + "; ".join(lines) + "\n"

    # -- the status page and API, gathered from the workers ------------------------------------

    def add_status_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self._index)
        app.router.add_get("/api/v1/probes", self._probes)
        app.router.add_get("/api/v1/probes/{name}", self._probe)

    async def _gather_json(self, path: str) -> list[Any]:
        answers = await asyncio.gather(*(w.get(path, "application/json") for w in self.workers))
        return [json.loads(a[2]) for a in answers if a is not None and a[0] == 200]

    async def _probes(self, request: web.Request) -> web.Response:
        history = request.query.get("history", "0")
        parts = await self._gather_json(f"/api/v1/probes?history={history}")
        probes = sorted((p for part in parts for p in part["probes"]), key=lambda p: p["name"])
        configured = len(self.config.probes)
        body = {
            "version": parts[0]["version"] if parts else "",
            "configured": configured,
            "warnings": [] if configured else [NO_PROBES],
            "probes": probes,
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _probe(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        worker = self.workers[worker_of(name, len(self.workers))]
        from urllib.parse import quote

        answer = await worker.get(f"/api/v1/probes/{quote(name, safe='')}", "application/json")
        if answer is None:
            return web.json_response({"error": "its worker is down", "probe": name}, status=503)
        status, content_type, body = answer
        return web.Response(
            body=body,
            status=status,
            content_type=content_type.partition(";")[0] or "application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def _index(self, request: web.Request) -> web.Response:
        only = request.query.get("probe")
        cards: list[dict[str, Any]] = [
            c for part in await self._gather_json("/-/cards") for c in part
        ]
        if only is not None:
            # The page of one probe: its card with the timeline, from the worker that runs it.
            owner = self.workers[worker_of(only, len(self.workers))]
            answer = await owner.get(f"/-/cards?{urlencode({'probe': only})}", "application/json")
            if answer is not None and answer[0] == 200:
                for card in json.loads(answer[2]):
                    cards = [c for c in cards if c["name"] != card["name"]] + [card]
        cards.sort(key=lambda c: (c["state"] != "failing", c["name"]))
        failing = sum(c["state"] == "failing" for c in cards)
        summary = f"{len(cards)} probes, {failing} failing" if cards else "no probes"
        down = [w.index for w in self.workers if not w.ready]
        note = (
            f'<p class="empty">workers down (their probes are missing): {down}</p>' if down else ""
        )
        if not self.config.probes:
            body = f'<p class="empty" id="no-probes">{NO_PROBES}</p>'
        elif only is not None:
            body = _one_probe(cards, only)
        else:
            body = "".join(
                c["detailed"] if i < PAGE_DETAILED and c["detailed"] else c["short"]
                for i, c in enumerate(cards)
            )
        text = page_frame(summary, failing, note + body, time.time())
        return web.Response(
            text=text, content_type="text/html", headers={"Cache-Control": "no-store"}
        )


def _one_probe(cards: Sequence[dict[str, Any]], only: str) -> str:
    import html

    chosen = [c for c in cards if c["name"] == only]
    if chosen and chosen[0]["detailed"] is None:
        # Its worker sent the short card only; the JSON API has the whole timeline.
        chosen[0]["detailed"] = chosen[0]["short"]
    return '<p><a href="/">all probes</a></p>' + (
        chosen[0]["detailed"] if chosen else f"<p>no probe named {html.escape(only)}</p>"
    )
