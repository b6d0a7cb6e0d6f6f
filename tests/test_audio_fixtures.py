"""The bundled fixtures are reproducible: the committed script regenerates the same manifest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from probed.audio import bundled_fixtures_dir

FIXTURES = Path(__file__).resolve().parent.parent / "audio_fixtures"


@pytest.mark.skipif(
    shutil.which("flite") is None or shutil.which("sox") is None, reason="needs flite and sox"
)
def test_regenerating_reproduces_the_manifest_and_the_audio(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(FIXTURES / "generate.py"), "--out", str(tmp_path)],
        check=True,
        timeout=120,
    )
    committed = json.loads((FIXTURES / "manifest.json").read_text())
    assert json.loads((tmp_path / "manifest.json").read_text()) == committed
    for clip in committed["clips"]:
        assert (tmp_path / clip["file"]).read_bytes() == (FIXTURES / clip["file"]).read_bytes()


def test_source_checkout_finds_the_fixtures() -> None:
    assert bundled_fixtures_dir() == FIXTURES
