"""Sharding: every probe runs on exactly k of n replicas, and growing n moves few probes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from probed.config import Config
from probed.daemon import Daemon
from probed.sharding import Shard, owners, resolve
from probed.targets.echo import EchoTarget
from tests.conftest import bound, config, wait_until

NAMES = [f"probe-{i:04d}" for i in range(2000)]


def test_parse_and_resolve() -> None:
    assert Shard.parse("2/5") == Shard(2, 5)
    # A StatefulSet pod name: the ordinal after the last dash is the index.
    assert Shard.parse("probed-eu-west-2/3") == Shard(2, 3)
    assert Shard.parse("probed-v2-0/3") == Shard(0, 3)
    assert Shard.parse("0/1", replicas=1) == Shard(0, 1)
    for bad in ("3/3", "1", "a/3", "-1/3", "1/0", "probed/3", ""):
        with pytest.raises(ValueError):
            Shard.parse(bad)
    with pytest.raises(ValueError, match="replication"):
        Shard.parse("0/3", replicas=4)

    env = {"PROBED_SHARD": "probed-1/4", "PROBED_SHARD_REPLICAS": "2"}
    assert resolve(None, None, env) == Shard(1, 4, 2)
    assert resolve(None, 3, env) == Shard(1, 4, 3)
    assert resolve("0/2", None, env) == Shard(0, 2, 1)  # the flag wins as a whole
    assert resolve(None, None, {}) is None
    with pytest.raises(ValueError, match="PROBED_SHARD_REPLICAS"):
        resolve(None, None, {"PROBED_SHARD": "0/2", "PROBED_SHARD_REPLICAS": "two"})


@pytest.mark.parametrize("replicas", [1, 2])
def test_every_probe_runs_exactly_k_times_and_load_is_even(replicas: int) -> None:
    shards = [Shard(i, 3, replicas) for i in range(3)]
    runs = Counter(name for shard in shards for name in NAMES if shard.owns(name))
    assert set(runs) == set(NAMES)
    assert set(runs.values()) == {replicas}
    per_shard = [sum(shard.owns(n) for n in NAMES) for shard in shards]
    expected = len(NAMES) * replicas / 3
    assert all(abs(count - expected) < 0.1 * expected for count in per_shard), per_shard


@pytest.mark.parametrize("replicas", [1, 2])
def test_growing_from_three_to_four_shards_moves_about_a_quarter(replicas: int) -> None:
    before = {name: set(owners(name, 3, replicas)) for name in NAMES}
    after = {name: set(owners(name, 4, replicas)) for name in NAMES}
    moved = [name for name in NAMES if before[name] != after[name]]
    fraction = len(moved) / len(NAMES)
    print(f"3 -> 4 shards, k={replicas}: {fraction:.3f} of probes changed shards")
    # Only the new shard takes work: nothing moves between the old three.
    for name in moved:
        assert after[name] - before[name] == {3}
        assert len(before[name] - after[name]) == 1
    # Rendezvous hashing moves k/(n+1) of the placements: 1/4 of probes for k=1; for k=2 a probe
    # moves when shard 3 enters its top two, which happens for 1/2 of them.
    expected = 0.25 if replicas == 1 else 0.5
    assert abs(fraction - expected) < 0.04


def _config_with(url: str, names: list[str]) -> Config:
    body = "".join(
        f"  - {{name: {n}, kind: echo, url: '{url}', interval: 200ms, timeout: 1s}}\n"
        for n in names
    )
    return config(f"probes:\n{body}")


@pytest.fixture
async def shards() -> AsyncIterator[Callable[[Config, list[Shard]], Awaitable[list[Daemon]]]]:
    started: list[tuple[Daemon, asyncio.Task[None]]] = []

    async def start(cfg: Config, specs: list[Shard]) -> list[Daemon]:
        daemons = []
        for shard in specs:
            daemon = Daemon(cfg, listen="127.0.0.1:0", shard=shard)
            task = asyncio.create_task(daemon.run(handle_signals=False))
            started.append((daemon, task))
            daemons.append(daemon)
        for daemon, task in started:

            def up(d: Daemon = daemon, t: asyncio.Task[None] = task) -> bool:
                return d.ready.is_set() or t.done()

            await wait_until(up, what="shard ready")
            if task.done():
                task.result()
        return daemons

    yield start
    for daemon, _task in started:
        daemon.stop()
    await asyncio.wait_for(asyncio.gather(*(t for _d, t in started)), bound(10))


@pytest.mark.parametrize("replicas", [1, 2])
async def test_three_daemons_on_one_config_run_each_probe_k_times(
    echo: EchoTarget,
    shards: Callable[[Config, list[Shard]], Awaitable[list[Daemon]]],
    replicas: int,
) -> None:
    names = [f"p{i}" for i in range(12)]
    daemons = await shards(_config_with(echo.url, names), [Shard(i, 3, replicas) for i in range(3)])
    # Every probe's session is really open somewhere, k times over.
    await wait_until(lambda: echo.sessions == len(names) * replicas, what="all sessions open")
    ran = Counter(p.name for d in daemons for p in d.exposition.probes())
    assert ran == dict.fromkeys(names, replicas)
    assert all(d.exposition.probes() for d in daemons), "a shard was left idle"
    assert all("shard" in d.status_line() for d in daemons)


async def test_the_cli_takes_the_shard_from_the_environment(
    tmp_path: Path, echo: EchoTarget
) -> None:
    names = [f"p{i}" for i in range(6)]
    body = "".join(
        f"  - {{name: {n}, kind: echo, url: '{echo.url}', interval: 1s}}\n" for n in names
    )
    path = tmp_path / "probed.yaml"
    path.write_text(f"probes:\n{body}")
    mine = [n for n in names if Shard(1, 2).owns(n)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "probed",
        "run",
        "--config.file",
        str(path),
        "--web.listen-address",
        "127.0.0.1:0",
        "--log.format",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PROBED_SHARD": "probed-1/2"},
    )
    try:
        assert proc.stdout is not None
        started: dict[str, object] = {}
        async with asyncio.timeout(bound(30)):
            while started.get("event") != "probed started":
                started = json.loads(await proc.stdout.readline())
        assert started["probes"] == len(mine) and len(mine) not in (0, len(names))
        await wait_until(lambda: echo.sessions == len(mine), what="the shard's sessions")
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), bound(10)) == 0
    bad = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "probed",
        "run",
        "-c",
        str(path),
        "--shard",
        "5/2",
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(bad.communicate(), bound(30))
    assert bad.returncode == 2 and b"shard index" in err


async def test_check_lists_each_shards_probes(tmp_path: Path) -> None:
    names = [f"p{i}" for i in range(9)]
    body = "".join(f"  - {{name: {n}, kind: echo, url: 'ws://127.0.0.1:1/ws'}}\n" for n in names)
    path = tmp_path / "probed.yaml"
    path.write_text(f"probes:\n{body}")
    listed: list[str] = []
    for index in range(3):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "probed",
            "check",
            "-c",
            str(path),
            "--shard",
            f"{index}/3",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), bound(30))
        assert proc.returncode == 0
        line = out.decode().splitlines()[-1]
        assert line.startswith(f"shard {index}/3: ")
        shown = line.split(": ", 2)[2]
        mine = [] if shown == "none" else shown.split(", ")
        assert mine == [n for n in names if Shard(index, 3).owns(n)]
        listed += mine
    assert sorted(listed) == sorted(names)
