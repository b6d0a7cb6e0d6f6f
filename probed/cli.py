"""Command line: run | check | once | demo | target | version."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from probed import __version__, logs

if TYPE_CHECKING:
    from probed.config import Config
    from probed.webconfig import WebConfig

T = TypeVar("T")


def _run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop (a dependency; plain asyncio only where uvloop cannot be installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _load(path: str) -> Config | None:
    from probed.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"probed: config has {len(exc.issues)} error(s):", file=sys.stderr)
        print(exc, file=sys.stderr)
        return None


def _load_web(path: str) -> WebConfig | None:
    from probed.config import ConfigError
    from probed.webconfig import load_web_config

    try:
        return load_web_config(path)
    except ConfigError as exc:
        print(f"probed: web config has {len(exc.issues)} error(s):", file=sys.stderr)
        print(exc, file=sys.stderr)
        return None


def _listen(value: str) -> str:
    from probed.config import split_listen

    try:
        split_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} {exc}") from None
    return value


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return int(value)


def _duration(value: str) -> float:
    from probed.config.durations import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive duration")
    return seconds


def cmd_run(args: argparse.Namespace) -> int:
    from probed.daemon import Daemon

    config = _load(args.config)
    if config is None:
        return 1
    web_config = None
    if args.web_config_file:
        web_config = _load_web(args.web_config_file)
        if web_config is None:
            return 1
    logs.configure(args.log_level or config.global_.log_level, json=_json_logs(args))

    from probed.sharding import resolve

    try:
        shard = resolve(args.shard, args.shard_replicas)
    except ValueError as exc:
        print(f"probed: {exc}", file=sys.stderr)
        return 2

    from probed.workers.plan import worker_count

    mine = config.probes if shard is None else shard.select(config.probes)
    workers = worker_count(args.workers, len(mine))

    async def main() -> None:
        options: dict[str, Any] = {
            "config_path": Path(args.config),
            "listen": args.listen,
            "log_level": args.log_level,
            "shard": shard,
            "enable_lifecycle": args.web_enable_lifecycle,
            "web_config": web_config,
        }
        if workers == 1:  # today's daemon, in this process: no parent, no channel
            await Daemon(config, **options).run()
            return
        from probed.workers.parent import ParentDaemon

        await ParentDaemon(
            config,
            workers=workers,
            log_format=args.log_format,
            liveness_timeout=args.workers_liveness_timeout,
            **options,
        ).run()

    try:
        _run_loop(main())
    except OSError as exc:
        print(f"probed: cannot listen: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from probed.config import config_json_schema

    if args.schema:
        print(json.dumps(config_json_schema(), indent=2))
        return 0
    if args.web_config_file:
        logs.configure("warning", json=_json_logs(args), stream=sys.stderr)
        if _load_web(args.web_config_file) is None:
            return 1
        print(f"{args.web_config_file}: OK")
        if not args.config:
            return 0
    if not args.config:
        print("probed check: give -c FILE, --web.config.file FILE or --schema", file=sys.stderr)
        return 2
    # Warnings found while loading (a token file others can read) go with the errors.
    logs.configure("warning", json=_json_logs(args), stream=sys.stderr)
    config = _load(args.config)
    if config is None:
        return 1
    names = ", ".join(p.name for p in config.probes) or "none"
    print(f"{args.config}: OK, {len(config.probes)} probe(s): {names}")
    if not config.probes:
        print(
            f"probed check: warning: {args.config} has no probes; `probed run` would start and "
            "measure nothing (add entries under probes:)",
            file=sys.stderr,
        )
    _warn_descriptors(config.sessions)
    return _print_shard(args, config)


def _print_shard(args: argparse.Namespace, config: Config) -> int:
    """With --shard (or PROBED_SHARD): which of the probes this replica would run."""
    from probed.sharding import resolve

    try:
        shard = resolve(args.shard, args.shard_replicas)
    except ValueError as exc:
        print(f"probed: {exc}", file=sys.stderr)
        return 2
    if shard is not None:
        mine = [p.name for p in shard.select(config.probes)]
        print(f"shard {shard}: {len(mine)} probe(s): {', '.join(mine) or 'none'}")
    return 0


def _warn_descriptors(sessions: int) -> None:
    import resource

    from probed.fdtable import SPARE

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and sessions + SPARE > soft:
        print(
            f"probed check: warning: {sessions} sessions need about {sessions + SPARE} "
            f"file descriptors but the limit here is {soft} (raise LimitNOFILE= / ulimit -n)",
            file=sys.stderr,
        )


def cmd_once(args: argparse.Namespace) -> int:
    from probed import kinds
    from probed.debugrun import OnceResult, report, report_json

    config = _load(args.config)
    if config is None:
        return 1
    selected = [p for p in config.probes if args.probe in (None, p.name)]
    if not selected:
        if not config.probes:
            print(f"probed once: {args.config} has no probes", file=sys.stderr)
        else:
            print(f"probed once: no probe named {args.probe!r}", file=sys.stderr)
        return 1
    # The report goes to stdout; logs only when asked for, on stderr, so --json stays parseable.
    logs.configure(args.log_level or "critical", json=_json_logs(args), stream=sys.stderr)

    async def main() -> list[OnceResult]:
        results = []
        for cfg in selected:
            metrics = kinds.new_metrics(cfg)
            log = logs.get(probe=cfg.name)
            log.info("probing", kind=cfg.kind, target=cfg.target)
            passed = await kinds.build(cfg, metrics, log).once()
            (log.info if passed else log.error)("result", success=passed)
            results.append(OnceResult(metrics.status, passed))
        return results

    results = _run_loop(main())
    if args.json:
        print(json.dumps(report_json(results), indent=2))
    else:
        print(report(results))
    return 0 if all(r.ok for r in results) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from probed.demo import run_demo

    logs.configure("info", json=_json_logs(args), stream=sys.stderr)
    code = _run_loop(run_demo(listen=args.listen, duration=args.duration))
    return code


def cmd_target(args: argparse.Namespace) -> int:
    logs.configure("info", json=_json_logs(args))
    with contextlib.suppress(KeyboardInterrupt):
        _run_loop(args.serve(args))
    return 0


def _json_logs(args: argparse.Namespace) -> bool | None:
    return {"auto": None, "json": True, "console": False}[args.log_format]


# Reference targets, imported only when `probed target ...` runs: the daemon and `check` never
# load them (nor aiohttp's server side, for check).
TARGETS: dict[str, tuple[str, str]] = {
    "echo": ("probed.targets.echo", "WebSocket echo server with fault controls"),
    "proxy": ("probed.targets.proxy", "fault-injecting TCP proxy with a control endpoint"),
    "pubsub": (
        "probed.targets.pubsub",
        "pub/sub rooms with acks, broadcast, delivery faults and ground truth",
    ),
    "whip": (
        "probed.targets.whip",
        "WHIP endpoint echoing WebRTC audio, with faults (needs the webrtc extra)",
    ),
    "stt": (
        "probed.targets.stt",
        "streaming speech-to-text emulator: deepgram, assemblyai or generic",
    ),
    "voice": (
        "probed.targets.voice",
        "realtime voice-agent emulator: gemini or openai (tool calls, go-away, barge-in)",
    ),
}


EPILOG = """\
examples:
  probed demo                           reference targets on loopback, probed, a live table
  probed check -c probed.yaml           validate a config: every error with its file and line
  probed once -c probed.yaml            each probe once, with a timeline; exit 1 on failure
  probed once -c probed.yaml --json     the same as one JSON document
  probed run -c probed.yaml             the daemon
  (example configs, one per probe kind: examples/ in the source tree)

signals (probed run):
  SIGTERM, SIGINT    close sessions (close code 1001) and exit 0
  SIGHUP             reload the config; unchanged probes keep their sessions, a bad file
                     keeps the running config

HTTP endpoints (probed run, at global.listen or --listen):
  /                  status page: every probe, its state, latency vs SLO, recent failures
  /api/v1/probes     the same as JSON (/api/v1/probes/NAME for one probe)
  /metrics           Prometheus metrics
  /-/healthy         liveness        /-/ready   readiness (probes started)
  /-/reload          POST or PUT: reload the config, like SIGHUP
"""


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    from probed.config.durations import format_duration
    from probed.workers.plan import LIVENESS_TIMEOUT

    parser = argparse.ArgumentParser(
        prog="probed",
        description="Realtime probe daemon: held WebSocket sessions measured into Prometheus.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"probed {__version__}")
    # Accepted before or after the subcommand: `probed --log-format json run` and `run --log-...`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-format",
        "--log.format",
        dest="log_format",
        choices=("auto", "json", "console"),
        default=argparse.SUPPRESS,
        help="auto (default): console on a terminal, JSON lines otherwise",
    )
    parser.add_argument(
        "--log-format",
        "--log.format",
        dest="log_format",
        choices=("auto", "json", "console"),
        default="auto",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, text: str, into: Any = sub) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = into.add_parser(name, help=text, parents=[common])
        return made

    run = add("run", "run the daemon")
    run.epilog = EPILOG.split("\n\n", 1)[1]  # signals and endpoints
    run.formatter_class = argparse.RawDescriptionHelpFormatter
    # The Prometheus exporters' flag names too, so existing runbooks and manifests carry over.
    run.add_argument(
        "-c", "--config", "--config.file", dest="config", required=True, help="YAML config file"
    )
    run.add_argument(
        "--listen",
        "--web.listen-address",
        dest="listen",
        type=_listen,
        help="HTTP listen address (overrides global.listen)",
    )
    run.add_argument(
        "--log-level",
        "--log.level",
        dest="log_level",
        choices=("debug", "info", "warning", "error"),
        help="log level: overrides global.log_level, also across reloads (default: the config's)",
    )
    run.add_argument(
        "--shard",
        metavar="INDEX/COUNT",
        help="run only the probes rendezvous hashing gives this shard, e.g. 0/3 or $(POD_NAME)/3"
        " (default: $PROBED_SHARD; unset runs every probe)",
    )
    run.add_argument(
        "--shard-replicas",
        type=int,
        metavar="K",
        help="run each probe on K of the shards (default: $PROBED_SHARD_REPLICAS or 1)",
    )
    run.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="worker processes to spread the probes over (default: the CPUs available to"
        " probed, at most one per probe; 1 runs everything in this process)",
    )
    run.add_argument(
        "--workers.liveness-timeout",
        dest="workers_liveness_timeout",
        type=_duration,
        default=LIVENESS_TIMEOUT,
        metavar="DURATION",
        help="a worker that answers no health check for this long is killed and started again"
        f" (default: {format_duration(LIVENESS_TIMEOUT)})",
    )
    run.add_argument(
        "--web.enable-lifecycle",
        dest="web_enable_lifecycle",
        action="store_true",
        help="allow POST /-/reload (off by default, as in Prometheus; SIGHUP always reloads)",
    )
    run.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="TLS and basic auth for the HTTP endpoint (Prometheus exporter-toolkit format)",
    )
    run.set_defaults(func=cmd_run)

    check = add("check", "validate a config file (exit 0/1)")
    check.add_argument("-c", "--config", "--config.file", dest="config", help="YAML config file")
    check.add_argument("--schema", action="store_true", help="print the config's JSON Schema")
    check.add_argument("--shard", metavar="INDEX/COUNT", help="also list this shard's probes")
    check.add_argument("--shard-replicas", type=int, metavar="K")
    check.add_argument(
        "--web.config.file", dest="web_config_file", metavar="FILE", help="check a web config"
    )
    check.set_defaults(func=cmd_check)

    once = add("once", "run each probe for one cycle and print a timeline")
    once.add_argument(
        "-c",
        "--config",
        "--config.file",
        dest="config",
        required=True,
        help="YAML config file whose probes to run once",
    )
    once.add_argument("--probe", help="only this probe (by name)")
    once.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the timeline"
    )
    once.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="also print the probes' logs at this level, on stderr (default: none)",
    )
    once.set_defaults(func=cmd_once)

    demo = add("demo", "reference targets on loopback plus the daemon probing them")
    demo.add_argument(
        "--listen", type=_listen, default=None, help="HTTP listen address (default 127.0.0.1:9464)"
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after SECONDS")
    demo.set_defaults(func=cmd_demo)

    target = add("target", "run a reference target (" + ", ".join(TARGETS) + ")")
    kinds = target.add_subparsers(dest="target", required=True)
    for name, (module_name, text) in TARGETS.items():
        p = add(name, text, kinds)
        if "target" in argv:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(func=cmd_target, serve=module.serve)

    add("version", "print the version").set_defaults(
        func=lambda _a: print(f"probed {__version__}") or 0
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    code: int = args.func(args)
    return code
