"""Soak and performance tests: run with PROBED_PERF=1; skipped in the default run."""
