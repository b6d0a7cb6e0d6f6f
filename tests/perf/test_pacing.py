"""The audio pacing harness (tests/perf/pacing.py): quick in every suite, the full run by hand.

The quick run checks the harness end to end (emulator and bare sender in their own processes, the
daemon's speech probes recorded chunk by chunk) and that lateness and drift come from real chunks;
it asserts no timings. The drift arithmetic is checked on its own against known schedules.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from array import array
from pathlib import Path

import pytest

from tests.perf.pacing_stats import StreamRecord, summarise

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
PERIOD = 20_000_000


def schedule(stream: str, t0: int, lateness_ns: list[int]) -> StreamRecord:
    sent = array("q", (t0 + i * PERIOD + late for i, late in enumerate(lateness_ns)))
    return StreamRecord(stream, t0, PERIOD, sent)


def test_drift_tells_absolute_deadlines_from_accumulating_ones() -> None:
    chunks = 3000  # a minute
    jitter = [(i * 7919) % 500_000 for i in range(chunks)]  # up to 0.5 ms, no trend
    steady = schedule("absolute", 0, jitter)
    # Each deadline taken from the previous send: every wake-up's 0.1 ms accumulates.
    creeping = schedule("relative", 5_000_000, [j + i * 100_000 for i, j in enumerate(jitter)])
    result = summarise([steady, creeping], warmup_s=0, seconds=60.2, bin_s=30)
    assert result["streams"] == 2 and result["chunks"] == 2 * chunks
    drift = result["drift"]
    assert drift["schedules_judged"] == 2
    # 0.1 ms a chunk, 50 chunks a second: 300 ms a minute; the steady one ~0.
    assert drift["slope_ms_per_min_max_abs"] == pytest.approx(300, rel=0.01)
    assert abs(drift["slope_ms_per_min_median"] - 150) < 3
    assert drift["wall_minus_audio_ms_max_abs"] == pytest.approx(299.9, abs=1)
    steady_only = summarise([steady], warmup_s=0, seconds=60.2, bin_s=30)["drift"]
    assert abs(steady_only["slope_ms_per_min_median"]) < 0.1
    assert abs(steady_only["trend_ms_per_min_median"]) < 0.1
    # Lateness per bin comes from the deadlines: the creeping stream's grows bin to bin.
    bins = summarise([creeping], warmup_s=0, seconds=60, bin_s=30)["bins"]
    assert bins[0]["max_ms"] < bins[1]["p50_ms"]


def test_a_stream_of_several_schedules_is_one_stream() -> None:
    first = schedule("p1", 0, [100_000] * 500)
    second = schedule("p1", 11 * 10**9, [100_000] * 500)  # the next utterance, 11 s later
    result = summarise([first, second], warmup_s=0, seconds=21, bin_s=21)
    assert result["streams"] == 1 and result["schedules"] == 2
    assert result["overall"]["p99_ms"] == pytest.approx(0.1)


async def run_harness(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.perf.pacing", *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


async def test_quick_pacing_run_measures_real_chunks(tmp_path: Path) -> None:
    out = await run_harness("--quick", "--json", str(tmp_path / "r.json"))
    print(out)
    result = json.loads((tmp_path / "r.json").read_text())
    probed, bare = result["probed"], result["bare"]
    for side in (probed, bare):
        assert side["streams"] == 4, side
        # About 50 chunks a second per stream over the 4 s measured; generous for a busy box.
        assert side["chunks"] > 4 * 50 * 4 / 3
        assert all(b["chunks"] > 0 for b in side["bins"])
        assert math.isfinite(side["overall"]["p99_ms"])
        assert side["drift"]["schedules_judged"] == 4
        assert math.isfinite(side["drift"]["slope_ms_per_min_median"])
    assert result["probed_cpu_fraction"] > 0 and math.isfinite(result["loop_lag_p99_ms"])
    (view,) = result["emulator_view"]
    assert view["streams"] == 4 and view["audio_seconds_total"] > 4 * 3
    assert "| **all** |" in out


@pytest.mark.perf
async def test_full_pacing_run_writes_results() -> None:
    await run_harness(
        "--streams", "200", "--minutes", "5",
        "--json", str(HERE / "results-pacing.json"),
        "--markdown", str(HERE / "results-pacing-table.md"),
    )  # fmt: skip
