"""Perf tests are opt-in: they take minutes and measure the machine as much as the code."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "perf: soak/performance test, skipped unless PROBED_PERF=1 is set"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PROBED_PERF") == "1":
        return
    skip = pytest.mark.skip(reason="perf test: set PROBED_PERF=1 to run")
    for item in items:
        if item.get_closest_marker("perf") is not None:
            item.add_marker(skip)
