"""Every config in examples/ passes `probed check`; every probe kind has one; loopback ones run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from probed import kinds
from probed.targets.echo import EchoTarget
from probed.targets.pubsub import PubSubTarget
from tests.test_cli import cli

EXAMPLES = Path(__file__).parent.parent / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))
TEXTS = {path.name: path.read_text() for path in FILES}
INDEX = (EXAMPLES / "README.md").read_text() if (EXAMPLES / "README.md").exists() else ""
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def placeholder_env(text: str) -> dict[str, str]:
    """A harmless value for every ${VAR} an example reads (each file documents its own)."""
    return {name: f"example-{name.lower()}" for name in _VAR.findall(text)}


def test_there_are_examples() -> None:
    assert FILES, "examples/*.yaml is empty"
    assert INDEX, "examples/README.md is missing"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
async def test_example_passes_probed_check(path: Path) -> None:
    code, out, err = await cli("check", "-c", str(path), env=placeholder_env(TEXTS[path.name]))
    assert code == 0, err
    assert "OK" in out and "warning" not in err
    assert path.name in INDEX, "list it in examples/README.md"


def test_every_probe_kind_has_an_example() -> None:
    shown = {
        probe.get("kind")
        for text in TEXTS.values()
        for probe in (yaml.safe_load(text).get("probes") or [])
    }
    missing = set(kinds.KINDS) - shown
    assert not missing, f"no example in examples/ for kind(s): {sorted(missing)}"


# Where the examples expect the reference targets: `probed target echo --port 8765` and
# `probed target pubsub --port 8766`. The test starts each on a free port and rewrites the file.
ECHO_AT, PUBSUB_AT = "127.0.0.1:8765", "127.0.0.1:8766"
RUNNABLE = [n for n, text in TEXTS.items() if ECHO_AT in text or PUBSUB_AT in text]


@pytest.mark.parametrize("name", RUNNABLE or ["none"])
async def test_loopback_examples_run(name: str, tmp_path: Path, echo: EchoTarget) -> None:
    assert name in TEXTS, "no example runs against a loopback reference target"
    async with PubSubTarget() as pubsub:
        text = TEXTS[name].replace(ECHO_AT, f"127.0.0.1:{echo.port}")
        config = tmp_path / name
        config.write_text(text.replace(PUBSUB_AT, f"127.0.0.1:{pubsub.port}"))
        code, out, err = await cli("once", "-c", str(config), "--json")
    assert code == 0, out + err
    probes = json.loads(out)["probes"]
    assert probes and all(p["ok"] and p["latency_s"] > 0 for p in probes), out
    # Every kind's `once` leaves a timeline: at least one cycle with steps.
    assert all(p["cycles"] and p["cycles"][0]["steps"] for p in probes), out
