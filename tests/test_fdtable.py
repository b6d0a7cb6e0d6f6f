"""The descriptor table is grown once at start, and never at the cost of an open descriptor."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

SCRIPT = """
import os, resource, sys
from probed.fdtable import SPARE, reserve

def table_size():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("FDSize:"))

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))
before = table_size()
# A descriptor already where the reservation reaches must survive it.
keep = os.open(os.devnull, os.O_RDONLY)
os.dup2(keep, 3000 + SPARE - 1)
reach = reserve(3000)
os.fstat(3000 + SPARE - 1)
print(before, reach, table_size(), reserve(10), reserve(10**6), min(8192, hard))
"""


def test_reserving_grows_the_table_to_the_sessions_and_the_limit() -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4096:
        pytest.skip("the hard descriptor limit here is too low to grow the table to 3,128")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
    ).stdout.split()
    before, reach, after, small, huge, limit = map(int, out)
    assert reach == 3000 + 128 and after >= reach > before
    assert small == 0  # the table every process starts with holds 10 sessions
    assert huge == limit  # bounded by the descriptor limit
