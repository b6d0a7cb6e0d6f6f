"""The incremental exposition: a cached render always equals a render from scratch."""

from __future__ import annotations

import asyncio
from collections.abc import Generator

from prometheus_client.parser import text_string_to_metric_families

from probed.exposition import Format, negotiate
from probed.metrics import DaemonMetrics, Exposition, ProbeMetrics
from probed.probes.messages import MessageMetrics
from probed.series import native_index, native_upper_bound

PROTOBUF = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"
)


def build(count: int) -> tuple[Exposition, list[tuple[ProbeMetrics, MessageMetrics]]]:
    # No process_* families: CPU seconds move between the two renders being compared.
    exposition = Exposition(DaemonMetrics(process=False))
    exposition.labels = {"location": "lab"}
    probes = []
    for i in range(count):
        p = ProbeMetrics(f"p{i}", kind="echo", target="ws://127.0.0.1:1/", slo_thresholds=(0.04,))
        m = MessageMetrics(p, p.latency("probe_message_rtt_seconds", "Round trip."))
        exposition.add(p)
        probes.append((p, m))
    return exposition, probes


def from_scratch(exposition: Exposition, fmt: Format) -> bytes:
    exposition.drop_caches()
    return exposition.render_format(fmt)


def test_cached_renders_follow_every_change() -> None:
    exposition, probes = build(3)
    for fmt in Format:
        exposition.render_format(fmt)  # fill the caches
    (_p0, m0), (p1, _m1), _ = probes
    m0.sent()
    m0.latency._histogram.observe(0.0123)
    p1.session().connect_failed("dns")
    exposition.labels = {"location": "lab-2"}
    p1.sessions.open.labels().inc()
    for fmt in Format:
        cached = exposition.render_format(fmt)
        assert cached == from_scratch(exposition, fmt), fmt
    text = exposition.render_format(Format.TEXT).decode()
    assert 'probe_messages_sent_total{location="lab-2",probe="p0"} 1' in text
    assert 'probe_connect_errors_total{location="lab-2",probe="p1",reason="dns"} 1' in text
    assert 'lab"' not in text  # the old global label is gone everywhere
    exposition.remove("p2")
    assert 'probe="p2"' not in exposition.render_format(Format.TEXT).decode()


def test_text_and_openmetrics_parse_to_the_same_samples() -> None:
    exposition, probes = build(2)
    probes[0][1].latency._histogram.observe(0.2009)
    text = exposition.render_format(Format.TEXT).decode()
    om = exposition.render_format(Format.OPENMETRICS).decode()
    assert om.endswith("# EOF\n")
    assert "# TYPE probe_messages_sent counter" in om
    assert "# TYPE probe_messages_sent_total counter" in text

    def samples(body: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in text_string_to_metric_families(body)
            for s in f.samples
        }

    assert samples(text) == samples(om.replace("# EOF\n", ""))


def test_negotiation_prefers_what_the_scraper_ranks_highest() -> None:
    prometheus_native = (
        f"{PROTOBUF};q=0.7,application/openmetrics-text;version=1.0.0;q=0.5,"
        "text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
    )
    assert negotiate(prometheus_native) is Format.PROTOBUF
    assert negotiate("application/openmetrics-text;version=1.0.0,text/plain;q=0.5") is (
        Format.OPENMETRICS
    )
    assert negotiate("") is Format.TEXT
    assert negotiate("application/json") is Format.TEXT
    # Protobuf of another message or framing is not ours to answer.
    assert negotiate("application/vnd.google.protobuf;proto=other.Thing") is Format.TEXT


async def test_concurrent_scrapers_share_one_render() -> None:
    exposition, _ = build(300)
    renders = 0
    original = exposition._render_steps

    def counting(fmt: Format) -> Generator[None, None, list[bytes]]:
        nonlocal renders
        renders += 1
        return original(fmt)

    exposition._render_steps = counting  # type: ignore[method-assign]
    results = await asyncio.gather(*(exposition.scrape("text/plain") for _ in range(5)))
    assert renders == 1
    assert len({b"".join(parts) for parts, _ in results}) == 1
    await exposition.scrape("text/plain")
    assert renders == 2  # a later scrape renders afresh: no stale answers


def test_native_buckets_hold_their_values_and_are_2_percent_wide() -> None:
    for value in (1e-6, 0.000317, 0.005, 0.04, 0.2009, 0.5, 1.0, 7.3, 30.0):
        index = native_index(value)
        lower, upper = native_upper_bound(index - 1), native_upper_bound(index)
        assert lower < value <= upper * (1 + 1e-12)
        assert upper / lower < 1.022
