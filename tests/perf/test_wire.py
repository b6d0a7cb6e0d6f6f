"""The wire-error harness (tests/perf/wire.py): a quick run in every suite, the full one on demand.

The quick run drives the whole path (echo server, tcpdump on lo, probed and the bare client, the
pcap read back) and checks that every message either client measured was found on the wire and
that the errors are finite and non-negative within a generous bound: a reported RTT is taken
around the kernel's own timestamps, so it cannot be shorter than the wire's (allowing for clock
reading jitter). It asserts no timings. It skips, saying why, where tcpdump cannot capture.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import pytest

from tests.perf.wire import SKIP_EXIT

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


async def run_wire(*args: str) -> tuple[str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.perf.wire", *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode == SKIP_EXIT:
        pytest.skip(err.decode().strip().splitlines()[-1])
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode(), err.decode()


async def test_quick_wire_run_pairs_every_message(tmp_path: Path) -> None:
    out, _ = await run_wire("--quick", "--json", str(tmp_path / "r.json"))
    print(out)
    (result,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert result["sessions_up"] == result["sessions"] == 2
    assert result["tcpdump"]["dropped_by_kernel"] == 0
    capture = result["capture"]
    assert capture["connections"] >= 4  # 2 probed + 2 bare sessions (more if one reconnected)
    assert capture["truncated_segments"] == capture["resyncs"] == capture["bad_frames"] == 0
    for side in ("probed", "bare"):
        got = result[side]
        assert got["measured"] > 0, f"{side} measured nothing"
        assert got["unpaired"] == 0, f"{side}: messages not found on the wire"
        assert got["error"]["pairs"] == got["measured"]
        for part in ("error", "send_side", "receive_side"):
            low, high = got[part]["min_ms"], got[part]["max_ms"]
            assert math.isfinite(low) and math.isfinite(high), (side, part)
            # Reading two clocks costs ~100 ns; a negative error beyond that is a pairing bug.
            assert low > -0.05, (side, part, low)
            assert high < 60_000, (side, part, high)
    assert "| probed error, all: p50 / p99 / max (ms) |" in out


@pytest.mark.perf
async def test_full_wire_run_writes_results() -> None:
    await run_wire(
        "--sizes", "1,1000,10000", "--seconds", "20",
        "--json", str(HERE / "results-wire.json"),
        "--markdown", str(HERE / "results-wire-table.md"),
    )  # fmt: skip
