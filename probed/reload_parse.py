"""Reading a reload's config in a process of its own, so that the loop only takes what changed.

Parsed in a thread of the daemon, a 1,000-probe config shares the GIL with the event loop: the
loop waited up to 20 ms at a time for its turn, stalling every session (and tainting their
measurements) once a reload in five. A child process (`python -m probed.reload_parse`) reads
and validates the file instead. It is told the fingerprint of every running probe's config, and
answers with the new config's global part plus, per probe, its fingerprint and, only if that
fingerprint is new, its validated config. An unchanged reload of 1,000 probes then hands the
loop a few dozen kilobytes of names and fingerprints, and the loop keeps the very config objects
its probes run with.

If the child cannot be started or dies, the reload is parsed in a thread as before: slower for
the loop, never a refused reload.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import subprocess
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any, Final, NoReturn

import structlog
from pydantic import BaseModel, SecretBytes, SecretStr

import probed
from probed import kinds, logs
from probed.config import Config, ConfigError, ConfigIssue, ProbeConfig, load_config
from probed.config.schema.probes import PROBE_KINDS
from probed.config.schema.root import config_model
from probed.offloop import in_thread

# A config is at most 16 MiB of YAML; a machine that takes this long to parse it is in trouble
# that a reload should report rather than wait out.
TIMEOUT_S: Final = 120.0
# Replies larger than this (many changed probes) are unpickled in a thread, not on the loop.
LOOP_UNPICKLE_MAX: Final = 256 * 1024

Fingerprints = dict[str, tuple[ProbeConfig, bytes]]
# Per probe in file order: name, fingerprint, and its config, left out (None) when unchanged.
Entry = tuple[str, bytes, ProbeConfig | None]
# A log event of the child's: its level and its fields.
_Event = tuple[str, dict[str, Any]]
# The child answers with what it logged, and the config's problems or its global fields and its
# probes' entries.
_Reply = tuple[list[_Event], ConfigError | tuple[dict[str, Any], list[Entry]]]


class Stale(Exception):
    """An update leaves out the config of a probe that the receiver does not run as it was."""


class ChildFailed(Exception):
    """The parsing process could not be run or did not answer; the thread parses instead."""


def fingerprint(cfg: BaseModel) -> bytes:
    """Equal for equal configs in any process; different when any field differs, secrets too.

    Not a pickle of the model itself: that is not stable across processes (the set of fields
    set follows the process's string hashing), and model_dump leaves out private state (a token
    read from a file). The canonical form is pickled without the pickler's memo, so that the
    bytes depend on the values alone, not on which of them share an object.
    """
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.fast = True
    pickler.dump(_canonical(cfg))
    return hashlib.blake2b(buf.getvalue(), digest_size=16).digest()


def _canonical(value: Any) -> Any:
    if isinstance(value, BaseModel):
        model = type(value)
        return (
            model.__module__,
            model.__qualname__,
            tuple((name, _canonical(getattr(value, name))) for name in model.model_fields),
            tuple(
                sorted((k, _canonical(v)) for k, v in (value.__pydantic_private__ or {}).items())
            ),
            _canonical(value.__pydantic_extra__ or {}),
        )
    if isinstance(value, SecretStr | SecretBytes):
        return ("secret", value.get_secret_value())
    if isinstance(value, dict):
        return ("dict", tuple((_canonical(k), _canonical(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_canonical(v) for v in value))
    if isinstance(value, set | frozenset):
        return ("set", tuple(sorted((_canonical(v) for v in value), key=repr)))
    return value


def fingerprints_of(config: Config, known: Fingerprints | None = None) -> Fingerprints:
    """Every probe's fingerprint, reusing those of `known` computed for the same config object."""
    known = known or {}
    found: Fingerprints = {}
    for probe in config.probes:
        entry = known.get(probe.name)
        found[probe.name] = (
            entry if entry is not None and entry[0] is probe else (probe, fingerprint(probe))
        )
    return found


def digests(prints: Fingerprints) -> dict[str, bytes]:
    """The fingerprints alone, by probe name: what travels to the parser."""
    return {name: fp for name, (_cfg, fp) in prints.items()}


def only_built_in_kinds() -> bool:
    """The child knows the built-in kinds only; a daemon with others (tests) parses in a thread."""
    return set(PROBE_KINDS.values()) == {kind.config for kind in kinds.BUILT_IN}


async def parse_reload(path: Path, running: Fingerprints) -> tuple[Config, Fingerprints]:
    """The config at `path`, holding the running config object of every probe that did not change.

    Raises ConfigError for a config that must not be used, as load_config does.
    """
    if only_built_in_kinds():
        try:
            return await _parse_in_child(path, running)
        except ChildFailed as exc:
            logs.get(component="reload").warning(
                "parsing the reload in this process instead", why=str(exc)
            )
    return await in_thread(_parse_here, path, running)


def _parse_here(path: Path, running: Fingerprints) -> tuple[Config, Fingerprints]:
    config = load_config(path)
    return assemble(without_probes(config), _entries(config, digests(running)), running)


async def _parse_in_child(path: Path, running: Fingerprints) -> tuple[Config, Fingerprints]:
    request = pickle.dumps((_identity(), str(path), digests(running)))
    returncode, out, err = await in_thread(_run_child, request, str(path))
    if returncode != 0 or not out:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise ChildFailed(f"the parser exited with {returncode}: {tail[0]}")
    reply: _Reply = (
        pickle.loads(out)  # noqa: S301 - our own child, over its private stdout
        if len(out) <= LOOP_UNPICKLE_MAX
        else await in_thread(pickle.loads, out)
    )
    events, answer = reply
    log = logs.get(component="reload")
    for method, fields in events:
        getattr(log, method, log.warning)(fields.pop("event", ""), **fields)
    if isinstance(answer, ConfigError):
        raise answer
    return assemble(*answer, running)


def _run_child(request: bytes, source: str) -> tuple[int, bytes, bytes]:
    """Start the parser, hand it the request and wait for its reply, all in a thread.

    Not the loop's subprocess_exec: uvloop forks, and copying the page tables of a daemon
    holding 1,000 sessions stopped the loop for 12-28 ms. CPython vforks, with the GIL released,
    but the parent still waits for the child to close the daemon's descriptors and exec (1-4.5 ms
    at 1,000 sessions): in a thread, that wait is not the loop's.
    """
    try:
        child = subprocess.Popen(
            # -P and the daemon's own import path: the child imports the code the daemon runs,
            # never a `probed` directory that happens to be in the working directory.
            [sys.executable, "-P", "-m", "probed.reload_parse"],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise ChildFailed(f"cannot start the parser: {exc}") from exc
    _yield_to_the_daemon(child.pid)
    try:
        out, err = child.communicate(request, TIMEOUT_S)
    except subprocess.TimeoutExpired:
        why = f"reading the config took longer than {TIMEOUT_S:.0f} s"
        raise ConfigError([ConfigIssue("", None, why)], source) from None
    finally:
        if child.returncode is None:
            child.kill()
            child.wait()
    return child.returncode, out, err


def _yield_to_the_daemon(pid: int) -> None:
    """Let the parser run only on a core nothing else wants.

    It needs a core for about 0.4 s per 1,000 probes; at SCHED_IDLE (or, where that is refused,
    nice 19) every wake-up of the daemon's loop preempts it on a machine with no core to spare.
    Where both are refused (systemd's @resources filter), it runs at the daemon's priority.
    """
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, 19)


def without_probes(config: Config) -> dict[str, Any]:
    # Config's class is made at run time (the union of the kinds), so its fields travel, not it.
    return {name: getattr(config, name) for name in type(config).model_fields if name != "probes"}


def _entries(config: Config, running: Mapping[str, bytes]) -> list[Entry]:
    entries: list[Entry] = []
    for probe in config.probes:
        fp = fingerprint(probe)
        entries.append((probe.name, fp, None if running.get(probe.name) == fp else probe))
    return entries


def assemble(
    fields: dict[str, Any], entries: list[Entry], known: Fingerprints
) -> tuple[Config, Fingerprints]:
    """The config an update describes; a probe it sends no config for is taken from `known`.

    Raises Stale when `known` does not hold that probe with that fingerprint: the sender
    thought the receiver ran something it does not.
    """
    probes: list[ProbeConfig] = []
    prints: Fingerprints = {}
    for name, fp, sent in entries:
        cfg = sent
        if cfg is None:
            entry = known.get(name)
            if entry is None or entry[1] != fp:
                raise Stale(name)
            cfg = entry[0]
        probes.append(cfg)
        prints[name] = (cfg, fp)
    return config_model().model_construct(**fields, probes=probes), prints


def _identity() -> tuple[str, str]:
    """Which probed this is: a parser running other code (upgraded on disk) must not answer."""
    return str(Path(probed.__file__).resolve()), probed.__version__


def _child_main() -> None:
    identity, path, running = pickle.load(sys.stdin.buffer)  # noqa: S301 - from our daemon
    if identity != _identity():
        sys.exit(f"this parser is {_identity()}, the daemon runs {identity}")
    # What loading logs (a secret file others can read) travels back to be logged by the daemon,
    # in its format and at its level; stdout carries the reply alone.
    events: list[_Event] = []

    def collect(_logger: object, method: str, event: MutableMapping[str, Any]) -> NoReturn:
        events.append((method, dict(event)))
        raise structlog.DropEvent

    structlog.configure(processors=[collect], cache_logger_on_first_use=False)
    answer: ConfigError | tuple[dict[str, Any], list[Entry]]
    try:
        config = load_config(path)
    except ConfigError as exc:
        answer = exc
    else:
        answer = (without_probes(config), _entries(config, running))
    reply: _Reply = (events, answer)
    sys.stdout.buffer.write(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _child_main()
