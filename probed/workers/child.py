"""A worker process: the ordinary Daemon on its share of the probes, with no public listener.

Started by the parent (`python -m probed.workers.child`), never forked from its running loop. It
reads the validated config from stdin, serves its exposition, status and an apply endpoint on a
unix socket in the parent's private directory, says "ready" on stdout, and stops when told
(SIGTERM), when its parent dies (PR_SET_PDEATHSIG) or when stdin closes (the parent went away by
any road). Interrupts from a terminal go to the parent, which stops the workers in order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, Final

import structlog
from aiohttp import web

from probed import gcpolicy, logs
from probed.config import Config
from probed.daemon import Daemon
from probed.http import HttpServer, make_app
from probed.httpguard import ConnectionGuard, HttpLimits
from probed.offloop import in_thread
from probed.reload_parse import LOOP_UNPICKLE_MAX, Stale
from probed.sharding import Shard
from probed.statuspage import PAGE_DETAILED, probe_html
from probed.workers.channel import (
    CONFIG_TYPE,
    READY_LINE,
    load_update,
    read_frame,
)
from probed.workers.plan import WorkerShard

_PR_SET_PDEATHSIG: Final = 1


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when the parent dies, even by SIGKILL; exit now if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before the line above
        sys.exit(0)


class WorkerDaemon(Daemon):
    """A Daemon that listens on a private unix socket and takes its config from the parent."""

    def __init__(self, config: Config, shard: WorkerShard, socket_path: str, **options: Any):
        super().__init__(config, listen="unix", shard=shard, **options)
        self.socket_path = socket_path
        self.worker = shard.index
        # The daemon's own lines (started, reloaded, stopping) are the parent's to say, once; a
        # worker keeps its warnings and errors (and its probes' lines, on their own loggers).
        self._log = structlog.wrap_logger(
            None,
            wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
            component="worker",
        )

    async def _serve(self) -> tuple[HttpServer, tuple[str, int]]:
        guard = ConnectionGuard(HttpLimits())
        app = make_app(self, guard)
        app.router.add_post("/-/apply", self._apply_handler)
        app.router.add_get("/-/cards", self._cards_handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        assert runner.server is not None
        server = await asyncio.get_running_loop().create_unix_server(
            runner.server, self.socket_path
        )
        return HttpServer(runner, server, guard), ("unix", 0)

    async def _apply_handler(self, request: web.Request) -> web.Response:
        if request.content_type != CONFIG_TYPE:
            return web.Response(status=415)
        # Not request.read(): the app refuses bodies over 64 KiB, and this one comes from the
        # parent over a socket only this user can open.
        data = await request.content.read()
        with gcpolicy.held_off():
            try:
                # An unchanged reload is names and fingerprints: read on the loop. Many changed
                # probes' configs are CPU work: off it, like the parent's parse.
                config, prints = (
                    load_update(data, self._fingerprints)
                    if len(data) <= LOOP_UNPICKLE_MAX
                    else await in_thread(load_update, data, self._fingerprints)
                )
            except Stale as exc:
                why = f"this worker does not run probe {exc} as the parent thought"
                return web.json_response({"ok": False, "stale": True, "why": why})
            if not self.ready.is_set():
                return web.json_response({"ok": False, "why": "worker is starting or stopping"})
            changes = self._apply(config)
            self._fingerprints = prints
        self.metrics.config_loaded(True)
        return web.json_response({"ok": True, "changes": changes})

    async def _cards_handler(self, request: web.Request) -> web.Response:
        """This worker's part of the status page: every probe's card, failing first.

        `?probe=NAME` asks for that one probe's card with its timeline (the page of one probe).
        """
        import time

        now = time.time()
        only = request.query.get("probe")
        statuses = sorted(
            (p.status for p in self.exposition.probes() if only in (None, p.name)),
            key=lambda s: (s.state != "failing", s.name),
        )
        cards = [
            {
                "name": s.name,
                "state": s.state,
                "short": probe_html(s, now, detailed=False),
                # Only the first few of all probes get their timelines on the page, and those
                # are among the first few of some worker's.
                "detailed": probe_html(s, now) if i < PAGE_DETAILED else None,
            }
            for i, s in enumerate(statuses)
        ]
        text = await asyncio.to_thread(json.dumps, cards)
        return web.Response(text=text, content_type="application/json")


async def _watch_stdin(daemon: Daemon) -> None:
    """Stop when the parent's end of stdin closes: the parent is gone, however it went."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    while await reader.read(4096):
        pass
    daemon.stop()


async def _announce_ready(daemon: Daemon) -> None:
    await daemon.ready.wait()
    sys.stdout.buffer.write(READY_LINE)
    sys.stdout.buffer.flush()


async def serve(daemon: WorkerDaemon) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, daemon.stop)
    tasks = [
        asyncio.create_task(_watch_stdin(daemon)),
        asyncio.create_task(_announce_ready(daemon)),
    ]
    try:
        await daemon.run(handle_signals=False)
    finally:
        for task in tasks:
            task.cancel()
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probed-worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--shard", default=None, help="the replica shard, as INDEX/COUNT/K")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--log-level", default=None)
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group; the parent decides, and stops us with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    die_with_parent(args.parent)
    config, prints = load_update(read_frame(sys.stdin.buffer), {})
    # Logs go to stderr, which is the parent's stdout: one stream for the journal.
    as_json = {"auto": None, "json": True, "console": False}[args.log_format]
    logs.configure(args.log_level or config.global_.log_level, json=as_json, stream=sys.stderr)
    structlog.contextvars.bind_contextvars(worker=args.index)
    within = None
    if args.shard:
        index, count, replicas = (int(x) for x in args.shard.split("/"))
        within = Shard(index, count, replicas)
    shard = WorkerShard(args.index, args.count, within=within)
    from probed.cli import _run_loop

    async def run() -> None:
        daemon = WorkerDaemon(config, shard, args.socket, log_level=args.log_level)
        daemon._fingerprints = prints  # the parent's: the worker need not compute them again
        await serve(daemon)

    _run_loop(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
