"""The hostile soak (tests/perf/soak.py) as a test: RSS, tasks and descriptors stay flat.

    PROBED_PERF=1 PROBED_SOAK_MINUTES=30 .venv/bin/python -m pytest -q -s \
        tests/perf/test_soak_hostile.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.perf
MINUTES = float(os.environ.get("PROBED_SOAK_MINUTES", "30"))
# Sessions dialling, the heap freezing, histories and remembered keys filling.
WARMUP_S = min(120.0, MINUTES * 60 / 4)


def test_soak_hostile(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    subprocess.run(
        [sys.executable, "-m", "tests.perf.soak", "--minutes", str(MINUTES), "--json", str(out)],
        check=True,
        timeout=MINUTES * 60 + 300,
    )
    rows = json.loads(out.read_text())
    # Sessions come and go with the fault schedule, so counts swing between samples; what must
    # not happen is a rising ceiling. Compare the peaks of the two halves after warm-up.
    steady = [r for r in rows if r["t_s"] >= WARMUP_S]
    half = max(1, len(steady) // 2)
    first, last = steady[:half], steady[-half:]

    def peak(rows: list[dict[str, float]], key: str) -> float:
        return max(r[key] for r in rows)

    print(f"RSS peak {peak(first, 'rss_mib')} MiB, then {peak(last, 'rss_mib')} MiB")
    assert peak(last, "rss_mib") - peak(first, "rss_mib") < 16, "RSS kept growing"
    assert peak(last, "tasks") <= peak(first, "tasks") + 50, "tasks kept growing"
    assert peak(last, "fds") <= peak(first, "fds") + 20, "descriptors grew"
    assert rows[-1]["churn_replies"] > rows[0]["churn_replies"], "the probes stopped measuring"
    assert rows[-1]["floods"] > rows[0]["floods"], "the floods stopped being classified"
    assert rows[-1]["restarts"] == 0, "a probe crashed"
