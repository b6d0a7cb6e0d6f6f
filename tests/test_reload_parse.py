"""A reload's config is read in a child process, and the loop keeps what did not change."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import probed
from probed.config import ConfigError, EchoProbeConfig, load_config
from probed.reload_parse import (
    Stale,
    digests,
    fingerprint,
    fingerprints_of,
    only_built_in_kinds,
    parse_reload,
)
from probed.workers.channel import dump_update, load_update

FALLBACK_EVENT = "parsing the reload in this process instead"


def config_text(token_file: Path, *, interval: str = "1s", header: str = "h1") -> str:
    return (
        "global:\n"
        "  labels: {site: lab}\n"
        "probes:\n"
        "  - name: tokened\n"
        "    kind: echo\n"
        "    url: ws://127.0.0.1:1/a\n"
        f"    bearer_token_file: {token_file}\n"
        "  - name: headered\n"
        "    kind: echo\n"
        "    url: ws://127.0.0.1:1/b\n"
        f"    headers: {{X-Key: {header}}}\n"
        "    setup: [{name: hello, send: hi, expect: {where: [{path: type, regex: '^ok'}]}}]\n"
        "  - name: timed\n"
        "    kind: http\n"
        "    url: http://127.0.0.1:1/health\n"
        f"    interval: {interval}\n"
    )


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    path = tmp_path / "probed.yaml"
    path.write_text(config_text(token))
    return path, token


def test_fingerprints_agree_across_processes_and_see_secrets(files: tuple[Path, Path]) -> None:
    path, token = files
    here = [fingerprint(p).hex() for p in load_config(path).probes]
    # Another interpreter with another string hashing must compute the same fingerprints.
    script = (
        "import sys; from probed.config import load_config; "
        "from probed.reload_parse import fingerprint; "
        "print(' '.join(fingerprint(p).hex() for p in load_config(sys.argv[1]).probes))"
    )
    for seed in ("1", "2"):
        out = (
            subprocess.run(
                [sys.executable, "-c", script, str(path)],
                env={**os.environ, "PYTHONHASHSEED": seed},
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.splitlines()[-1]
            .split()
        )
        assert out == here
    token.write_text("rotated-token\n")  # private state, which model_dump leaves out
    rotated = [fingerprint(p).hex() for p in load_config(path).probes]
    assert rotated[0] != here[0] and rotated[1:] == here[1:]
    path.write_text(config_text(token, header="h2"))  # a secret header
    assert [fingerprint(p).hex() for p in load_config(path).probes][1] != here[1]


async def test_an_unchanged_reload_hands_back_the_running_config_objects(
    files: tuple[Path, Path],
) -> None:
    path, _token = files
    running = load_config(path)
    prints = fingerprints_of(running)
    assert only_built_in_kinds()
    with capture_logs() as logged:
        config, new_prints = await parse_reload(path, prints)
    assert not [e for e in logged if e["event"] == FALLBACK_EVENT], logged
    # The child's warnings are the daemon's to log.
    assert [e["path"] for e in logged if e["event"].startswith("secret file is readable")] == [
        str(path.parent / "token")
    ]
    assert all(new is old for new, old in zip(config.probes, running.probes, strict=True))
    assert config.global_ == running.global_
    assert digests(new_prints) == digests(prints)


async def test_only_the_changed_probes_come_back_new(files: tuple[Path, Path]) -> None:
    path, token = files
    running = load_config(path)
    token.write_text("rotated-token\n")
    path.write_text(config_text(token, interval="2s"))
    config, prints = await parse_reload(path, fingerprints_of(running))
    tokened, headered, timed = config.probes
    assert isinstance(tokened, EchoProbeConfig) and tokened is not running.probes[0]
    assert tokened.request_headers()["Authorization"] == "Bearer rotated-token"
    assert headered is running.probes[1]
    assert timed is not running.probes[2] and timed.interval == 2.0
    assert all(prints[p.name][0] is p for p in config.probes)


async def test_a_bad_config_is_reported_from_the_child_with_its_line(
    files: tuple[Path, Path],
) -> None:
    path, token = files
    running = load_config(path)
    path.write_text(config_text(token).replace("interval: 1s", "interval: soon"))
    with capture_logs() as logged, pytest.raises(ConfigError) as caught:
        await parse_reload(path, fingerprints_of(running))
    assert not [e for e in logged if e["event"] == FALLBACK_EVENT]
    assert any(
        line.startswith(f"{path}:16: probes[2].interval") for line in caught.value.lines()
    ), caught.value.lines()


async def test_without_a_child_the_reload_is_parsed_here_to_the_same_result(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, token = files
    running = load_config(path)
    path.write_text(config_text(token, interval="2s"))
    monkeypatch.setattr(sys, "executable", str(path.parent / "no-such-python"))
    with capture_logs() as logged:
        config, _prints = await parse_reload(path, fingerprints_of(running))
    assert [e for e in logged if e["event"] == FALLBACK_EVENT], logged
    assert config.probes[0] is running.probes[0] and config.probes[1] is running.probes[1]
    assert config.probes[2].interval == 2.0


async def test_the_child_imports_the_daemons_code_not_the_working_directorys(
    files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _token = files
    running = load_config(path)
    impostor = tmp_path / "cwd" / "probed"
    impostor.mkdir(parents=True)
    (impostor / "__init__.py").write_text("raise SystemExit('the wrong probed')\n")
    monkeypatch.chdir(impostor.parent)
    with capture_logs() as logged:
        config, _prints = await parse_reload(path, fingerprints_of(running))
    assert not [e for e in logged if e["event"] == FALLBACK_EVENT], logged
    assert config.probes[0] is running.probes[0]


async def test_a_child_running_other_code_is_not_believed(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _token = files
    running = load_config(path)
    # As after an upgrade on disk: the daemon still runs the version it started with.
    monkeypatch.setattr(probed, "__version__", "0.0.0-running")
    with capture_logs() as logged:
        config, _prints = await parse_reload(path, fingerprints_of(running))
    (fallback,) = [e for e in logged if e["event"] == FALLBACK_EVENT]
    assert "0.0.0-running" in fallback["why"]
    assert config.probes[0] is running.probes[0]


async def test_a_workers_update_carries_only_what_changed_and_refuses_a_stale_base(
    files: tuple[Path, Path],
) -> None:
    path, token = files
    before = load_config(path)
    before_prints = fingerprints_of(before)
    # The worker as it runs: what it was started with, unpickled in its own objects.
    worker_config, worker_prints = load_update(dump_update(before, before_prints, {}), {})
    token.write_text("rotated-token\n")
    after, after_prints = await parse_reload(path, before_prints)
    unchanged = {p.name: p for p in before.probes}
    delta = dump_update(after, after_prints, unchanged)
    _fields, entries = pickle.loads(delta)
    assert [(name, cfg is None) for name, _fp, cfg in entries] == [
        ("tokened", False),
        ("headered", True),
        ("timed", True),
    ]
    config, prints = load_update(delta, worker_prints)
    tokened, headered, timed = config.probes
    assert headered is worker_config.probes[1] and timed is worker_config.probes[2]
    assert tokened == after.probes[0] and tokened != worker_config.probes[0]
    assert digests(prints) == digests(after_prints)
    # A worker that does not run what the parent thought says so, and gets the whole config.
    with pytest.raises(Stale, match="headered"):
        load_update(delta, {"tokened": worker_prints["tokened"]})
    again = dump_update(after, after_prints, {p.name: p for p in after.probes})
    with pytest.raises(Stale, match="tokened"):
        load_update(again, worker_prints)
