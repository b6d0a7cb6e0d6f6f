"""The benchmark harness (tests/perf/bench.py): a quick run in every suite, the full one on demand.

The quick run checks that the harness works end to end (echo server and bare client in their own
processes, probed scraped and reloaded) and that it reports every figure; it asserts no timings,
which on a shared machine would measure the neighbours. The full run writes the committed results.
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


async def run_bench(*args: str) -> tuple[str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.perf.bench", *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode(), err.decode()


async def test_quick_bench_reports_every_figure(tmp_path: Path) -> None:
    out, _ = await run_bench("--quick", "--json", str(tmp_path / "r.json"))
    print(out)
    (result,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert result["probes"] == 3
    for phase in ("no_scrape", "scrape_every_5s"):
        assert result[phase]["samples"] > 0, "probed measured nothing"
        assert math.isfinite(result[phase]["rtt_p99_ms"])
    assert result["bare"]["samples"] > 0, "the bare client measured nothing"
    assert result["scrape_wall_ms"], "no scrape went through HTTP"
    assert set(result["scrape_cpu_ms"]) >= {"text", "openmetrics", "protobuf"}
    assert result["reload_unchanged_ms"] > 0 and result["reload_longest_loop_stall_ms"] >= 0
    assert "| RTT p99 probed / bare (ms) |" in out


@pytest.mark.perf
async def test_full_bench_writes_results() -> None:
    await run_bench(
        "--sizes", "10,100,1000", "--phase", "30",
        "--json", str(HERE / "results.json"), "--markdown", str(HERE / "results-table.md"),
    )  # fmt: skip
