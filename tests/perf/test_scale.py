"""The scale harness (tests/perf/scale.py): a quick run in every suite, the full one on demand.

The quick run checks the harness end to end (the SO_REUSEPORT echo server, the bare client's turn,
probed's turn) and that every figure is reported; it asserts no timings.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


async def run_scale(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.perf.scale", *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


async def test_quick_scale_reports_every_figure(tmp_path: Path) -> None:
    out = await run_scale("--quick", "--json", str(tmp_path / "r.json"))
    print(out)
    (result,) = json.loads((tmp_path / "r.json").read_text())["results"]
    probed, bare = result["probed"], result["bare"]
    assert result["sessions"] == 20
    assert probed["sessions_up_at_end"] == 20 and bare["sessions_up"] == 20
    for side in (probed, bare):
        assert side["samples"] > 0, "nothing measured"
        assert math.isfinite(side["rtt_p99_ms"]) and math.isfinite(side["loop_lag_p99_ms"])
        assert side["rss_per_session_kb"] is not None and side["cpu_fraction"] > 0
    assert probed["all_up_s"] is not None
    assert "| RTT p99 (ms), ratio |" in out


@pytest.mark.perf
async def test_full_scale_writes_results() -> None:
    await run_scale(
        "--sizes", "1000,10000", "--phase", "20",
        "--json", str(HERE / "results-scale.json"),
        "--markdown", str(HERE / "results-scale-table.md"),
    )  # fmt: skip
