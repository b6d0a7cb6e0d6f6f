"""The log limiter on a fake clock: bursts pass, the rest is dropped and then reported."""

from probed.ratelimit import LogLimiter


def test_burst_passes_then_drops_and_reports_the_count() -> None:
    now = [0.0]
    limiter = LogLimiter(burst=3, window=10.0, clock=lambda: now[0])
    assert [limiter.allow("k") for _ in range(5)] == [0, 0, 0, None, None]
    assert limiter.allow("other") == 0, "keys are limited separately"
    now[0] = 10.0
    assert limiter.allow("k") == 2, "the first line of a new window says what was dropped"
    assert limiter.allow("k") == 0


def test_keys_are_bounded() -> None:
    limiter = LogLimiter(burst=1, window=60.0, clock=lambda: 0.0)
    for i in range(10_000):
        limiter.allow(f"k{i}")
    assert len(limiter._windows) <= 256
