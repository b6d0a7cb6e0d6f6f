"""The workers benchmark (tests/perf/workers_bench.py) in its quick mode: the harness works.

It starts real echo servers, a 1-worker and a 2-worker probed and a bare client, and checks that
every figure is reported; it asserts no timing (the machine is shared).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


async def test_quick_workers_bench_reports_every_figure(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.perf.workers_bench", "--quick",
        "--json", str(tmp_path / "r.json"),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    one, two = result["phases"]
    assert (one["workers"], two["workers"]) == (1, 2)
    assert two["sessions"] == 2 * one["sessions"]
    assert [w["worker"] for w in two["per_worker"]] == [0, 1]
    assert set(two["cpu_share"]) == {"parent", "worker 0", "worker 1", "bare client"}
    for phase in (one, two):
        assert sum(w["rtt_samples"] for w in phase["per_worker"]) > 0, "nothing measured"
        assert phase["bare_client"]["samples"] > 0
    assert "load average" in out.decode()
