"""`probed run --workers N`: real worker processes behind one HTTP face, against the echo target."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from probed.exposition import Format
from probed.sharding import Shard
from probed.targets.echo import EchoTarget
from probed.workers.merge import merge
from probed.workers.plan import WorkerShard, cpu_quota, worker_count
from tests.conftest import bound
from tests.protobuf_reader import read_delimited
from tests.workers_helpers import OPENMETRICS, PROTOBUF, Running, echo_config, probed_run

NAMES = [f"echo-{i}" for i in range(8)]


def samples_of(text: str, name: str) -> list[dict[str, str]]:
    return [
        s.labels
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


async def all_up(run: Running, names: list[str]) -> bool:
    text = (await run.scrape()).decode()
    up = {s["probe"] for s in samples_of(text, "probe_connections_open")}
    rtt = [s for s in samples_of(text, "probe_message_rtt_seconds_count")]
    return up == set(names) and len(rtt) == len(names)


def values_of(text: str, name: str) -> list[Sample]:
    return [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


async def test_two_workers_serve_one_exposition_in_every_format(
    echo: EchoTarget, tmp_path: Path
) -> None:
    config = write(tmp_path / "probed.yaml", echo_config(echo.port, NAMES))
    async with probed_run(config, "--workers", "2") as run:
        children = run.children()
        assert len(children) == 2
        await run.wait_for(lambda: all_up(run, NAMES), "every probe up, through the parent")

        text = (await run.scrape()).decode()
        families = list(text_string_to_metric_families(text))
        names = [f.name for f in families]
        assert len(names) == len(set(names)), "a family appears twice"
        assert text.count("# TYPE probe_message_rtt_seconds histogram") == 1
        info = [s["probe"] for s in samples_of(text, "probe_info")]
        assert sorted(info) == sorted(NAMES), "every probe exactly once"
        # Each worker's own process and loop lag, labelled; the parent's, unlabelled.
        cpu = {s.get("worker") for s in samples_of(text, "process_cpu_seconds_total")}
        assert cpu == {None, "0", "1"}
        lag = {s.get("worker") for s in samples_of(text, "probed_event_loop_lag_seconds_count")}
        assert lag == {"0", "1"}
        assert len(samples_of(text, "probed_build_info")) == 1
        assert [s["worker"] for s in samples_of(text, "probed_worker_up")] == ["0", "1"]
        assert all(s["location"] == "test" for s in samples_of(text, "probe_success"))

        status, content_type, body = await run.get("/metrics", OPENMETRICS)
        assert content_type.startswith("application/openmetrics-text")
        # Strict: no family twice, exactly one EOF.
        om = list(openmetrics_families(body.decode()))  # type: ignore[no-untyped-call]
        om_info = [s.labels["probe"] for f in om for s in f.samples if s.name == "probe_info"]
        assert sorted(om_info) == sorted(NAMES)

        status, content_type, body = await run.get("/metrics", PROTOBUF)
        assert status == 200 and "encoding=delimited" in content_type
        pb = read_delimited(body)
        pb_names = [f.name for f in pb]
        assert len(pb_names) == len(set(pb_names))
        by_name = {f.name: f for f in pb}
        assert sorted(m.labels["probe"] for m in by_name["probe_info"].metrics) == sorted(NAMES)
        rtt = by_name["probe_message_rtt_seconds"]
        assert rtt.type == 4 and len(rtt.metrics) == len(NAMES)
        assert all(m.native for m in rtt.metrics), "native histograms survive the merge"
        pb_cpu = {m.labels.get("worker") for m in by_name["process_cpu_seconds_total"].metrics}
        assert pb_cpu == {None, "0", "1"}

        # The status page and the API gather every worker's probes.
        status, _type, page = await run.get("/")
        assert status == 200
        assert all(f'data-probe="{n}"' in page.decode() for n in NAMES)
        status, _type, api = await run.get("/api/v1/probes")
        import json

        listed = json.loads(api)
        assert [p["name"] for p in listed["probes"]] == sorted(NAMES)
        assert listed["configured"] == len(NAMES)
        status, _type, one = await run.get("/api/v1/probes/echo-5")
        assert status == 200 and json.loads(one)["name"] == "echo-5"
        status, _type, page = await run.get("/?probe=echo-5")
        assert status == 200 and 'data-probe="echo-5"' in page.decode()
        assert 'data-probe="echo-4"' not in page.decode() and "recent cycles" in page.decode()
        status, _type, _ = await run.get("/-/healthy")
        assert status == 200

        # SIGTERM: the workers close their sessions and exit, then the parent does.
        run.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(run.proc.wait(), bound(30)) == 0
    for pid in children:
        assert not _alive(pid), "a worker outlived its parent"


async def test_reload_moves_probes_and_a_bad_config_changes_nothing(
    echo: EchoTarget, tmp_path: Path
) -> None:
    config = write(tmp_path / "probed.yaml", echo_config(echo.port, NAMES[:4]))
    async with probed_run(config, "--workers", "2") as run:
        await run.wait_for(lambda: all_up(run, NAMES[:4]), "the first four probes")
        wanted = NAMES[2:]
        write(config, echo_config(echo.port, wanted))
        os.kill(run.proc.pid, signal.SIGHUP)
        await run.wait_log("config reloaded")
        reloaded = run.logged("config reloaded")
        assert len(reloaded) == 1, "one reload, logged once by the parent"
        assert sorted(reloaded[0]["started_probes"]) == NAMES[4:]
        assert sorted(reloaded[0]["stopped_probes"]) == NAMES[:2]
        assert reloaded[0]["kept"] == 2
        await run.wait_for(lambda: all_up(run, wanted), "the reloaded set")

        write(config, echo_config(echo.port, NAMES) + "  - {name: broken, kind: echo}\n")
        os.kill(run.proc.pid, signal.SIGHUP)
        await run.wait_log("reload failed; keeping the running config")
        text = (await run.scrape()).decode()
        assert sorted(s["probe"] for s in samples_of(text, "probe_info")) == wanted
        ok = samples_of(text, "probed_config_last_reload_successful")
        assert len(ok) == 1
        assert 'probed_config_last_reload_successful{location="test"} 0.0' in text
        # Reported once, by the parent; no worker saw the bad file.
        assert len(run.logged("reload failed; keeping the running config")) == 1
        assert len(run.logged("config reloaded")) == 1


async def test_a_killed_worker_is_restarted_and_counted(echo: EchoTarget, tmp_path: Path) -> None:
    config = write(tmp_path / "probed.yaml", echo_config(echo.port, NAMES))
    async with probed_run(config, "--workers", "2") as run:
        await run.wait_for(lambda: all_up(run, NAMES), "every probe up")
        victim = run.children()[1]
        os.kill(victim, signal.SIGKILL)
        await run.wait_log("worker exited; starting it again")
        await run.wait_log("worker started", count=3)

        async def restarted() -> bool:
            text = (await run.scrape()).decode()
            counts = {s["worker"]: s for s in samples_of(text, "probed_worker_restarts_total")}
            return bool(counts) and await all_up(run, NAMES)

        await run.wait_for(restarted, "the worker back with its probes")
        text = (await run.scrape()).decode()
        assert 'probed_worker_restarts_total{location="test",worker="1"} 1.0' in text or (
            'probed_worker_restarts_total{location="test",worker="0"} 1.0' in text
        )
        assert text.count('restarts_total{location="test",worker=') == 2
        assert victim not in run.children()
        status, _type, body = await run.get("/-/healthy")
        assert status == 200, body


async def test_a_worker_that_stops_answering_is_killed_and_restarted(
    echo: EchoTarget, tmp_path: Path
) -> None:
    config = write(tmp_path / "probed.yaml", echo_config(echo.port, NAMES[:4]))
    async with probed_run(config, "--workers", "2", "--workers.liveness-timeout", "3s") as run:
        await run.wait_for(lambda: all_up(run, NAMES[:4]), "every probe up")
        victim = run.children()[0]
        # Alive, holding its sockets, answering nothing: what a worker stuck in a call looks like.
        os.kill(victim, signal.SIGSTOP)
        try:
            await run.wait_log("worker stopped answering; killing it", pid=victim)
            await run.wait_log("worker started", count=3)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGCONT)
        assert victim not in run.children()
        await run.wait_for(lambda: all_up(run, NAMES[:4]), "the worker back with its probes")
        text = (await run.scrape()).decode()
        assert sum(s.value for s in values_of(text, "probed_worker_restarts_total")) == 1
        # The healthy worker never missed enough checks to be killed.
        assert len(run.logged("worker stopped answering; killing it")) == 1


async def test_no_worker_outlives_a_killed_parent(echo: EchoTarget, tmp_path: Path) -> None:
    config = write(tmp_path / "probed.yaml", echo_config(echo.port, NAMES[:4]))
    async with probed_run(config, "--workers", "2") as run:
        await run.wait_log("worker started", count=2)
        children = run.children()
        assert len(children) == 2
        run.proc.kill()
        await run.proc.wait()
        deadline = asyncio.get_running_loop().time() + bound(20)
        while any(_alive(pid) for pid in children):
            assert asyncio.get_running_loop().time() < deadline, "orphaned workers"
            await asyncio.sleep(0.05)


def _env(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for init to reap it."""
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


async def test_one_worker_is_todays_daemon(echo: EchoTarget, tmp_path: Path) -> None:
    config = write(tmp_path / "probed.yaml", echo_config(echo.port, NAMES[:3]))
    async with probed_run(config, "--workers", "1") as run:
        await run.wait_for(lambda: all_up(run, NAMES[:3]), "every probe up")
        assert run.children() == []
        text = (await run.scrape()).decode()
        assert "probed_worker_up" not in text and 'worker="' not in text


async def test_systemd_hears_the_parent_only(echo: EchoTarget, tmp_path: Path) -> None:
    """READY, the watchdog and the status line come from the parent; workers never inherit them."""
    import socket

    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    seen: list[str] = []

    def drain() -> list[str]:
        while True:
            try:
                seen.append(sock.recv(4096).decode())
            except BlockingIOError:
                return seen

    config = write(tmp_path / "probed.yaml", echo_config(echo.port, NAMES[:4]))
    os.environ["NOTIFY_SOCKET"] = path
    os.environ["WATCHDOG_USEC"] = "400000"
    try:
        async with probed_run(config, "--workers", "2") as run:
            await run.wait_for(lambda: all_up(run, NAMES[:4]), "every probe up")
            for pid in run.children():
                assert not any(v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_")) for v in _env(pid))

            async def fed() -> bool:
                lines = drain()
                return sum(s.startswith("WATCHDOG=1") for s in lines) >= 2 and any(
                    "4 probes over 2 workers, 2 up" in s for s in lines
                )

            await run.wait_for(fed, "keep-alives and the status line")
            assert "READY=1" in seen
    finally:
        del os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"]
        sock.close()


# -- the parts, without processes ----------------------------------------------------------------


def test_worker_count_follows_the_cores_and_never_exceeds_the_probes() -> None:
    assert worker_count(4, 10) == 4
    assert worker_count(4, 2) == 2
    assert worker_count(4, 0) == 1
    assert worker_count(None, 1000) == min(len(os.sched_getaffinity(0)), cpu_quota() or 1000)


def test_cpu_quota_reads_the_tightest_cgroup_limit(tmp_path: Path) -> None:
    # cgroup v2, as systemd lays it out: a quota on the service and a looser one on its slice.
    service = tmp_path / "system.slice" / "probed.service"
    service.mkdir(parents=True)
    (service / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "system.slice" / "cpu.max").write_text("400000 100000\n")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    own = tmp_path / "self-cgroup"
    own.write_text("0::/system.slice/probed.service\n")
    assert cpu_quota(tmp_path, own) == 2
    (service / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path, own) == 4
    # A Kubernetes container: its own cgroup namespace, the limit at its root.
    own.write_text("0::/\n")
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert cpu_quota(tmp_path, own) == 1
    # cgroup v1: the cpu controller's CFS quota; -1 is none.
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "kubepods" / "pod1").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "kubepods" / "pod1" / "cpu.cfs_quota_us").write_text("250000\n")
    (v1 / "cpu,cpuacct" / "kubepods" / "pod1" / "cpu.cfs_period_us").write_text("100000\n")
    own.write_text("4:cpu,cpuacct:/kubepods/pod1\n1:memory:/kubepods/pod1\n")
    assert cpu_quota(v1, own) == 3
    (v1 / "cpu,cpuacct" / "kubepods" / "pod1" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(v1, own) is None
    assert cpu_quota(tmp_path, tmp_path / "absent") is None


def test_workers_split_a_replicas_probes_and_keep_them_on_reload() -> None:
    names = [f"p{i}" for i in range(400)]

    class P:
        def __init__(self, name: str) -> None:
            self.name = name

    probes = [P(n) for n in names]
    replica = Shard(1, 3)
    mine = {p.name for p in replica.select(probes)}
    split = [{p.name for p in WorkerShard(i, 2, within=replica).select(probes)} for i in range(2)]
    assert split[0] | split[1] == mine and not split[0] & split[1]
    assert all(len(part) > len(mine) / 4 for part in split), "one worker got nearly all"
    # More probes in the config: none of the others moves.
    grown = [*probes, *(P(f"new{i}") for i in range(50))]
    again = [{p.name for p in WorkerShard(i, 2, within=replica).select(grown)} for i in range(2)]
    assert all(split[i] <= again[i] for i in range(2))


def test_merge_labels_each_workers_process_families_and_keeps_one_header() -> None:
    parent = (
        b"# HELP probed_build_info Build facts; always 1.\n# TYPE probed_build_info gauge\n"
        b'probed_build_info{version="1"} 1.0\n'
        b"# HELP process_open_fds Number of open file descriptors.\n"
        b"# TYPE process_open_fds gauge\nprocess_open_fds 9.0\n"
    )

    def worker(probe: str) -> bytes:
        return (
            b"# HELP probed_build_info Build facts; always 1.\n# TYPE probed_build_info gauge\n"
            b'probed_build_info{version="1"} 1.0\n'
            b"# HELP process_open_fds Number of open file descriptors.\n"
            b'# TYPE process_open_fds gauge\nprocess_open_fds{location="a b"} 7.0\n'
            b"# HELP probe_success Up.\n# TYPE probe_success gauge\n"
            + f'probe_success{{probe="{probe}"}} 1\n'.encode()
        )

    text = b"".join(merge(parent, [("0", worker("x")), ("1", worker("y"))], Format.TEXT)).decode()
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert [s.labels for s in parsed["process_open_fds"].samples] == [
        {},
        {"worker": "0", "location": "a b"},
        {"worker": "1", "location": "a b"},
    ]
    assert len(parsed["probed_build_info"].samples) == 1
    assert [s.labels["probe"] for s in parsed["probe_success"].samples] == ["x", "y"]
    assert text.count("# HELP probe_success") == 1


@pytest.mark.parametrize("argument", ["0", "-1", "two"])
def test_workers_must_be_a_positive_count(argument: str, tmp_path: Path) -> None:
    from probed.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "-c", "x.yaml", "--workers", argument])


@pytest.mark.e2e
async def test_prometheus_scrapes_a_two_worker_daemon(echo: EchoTarget, tmp_path: Path) -> None:
    """The Debian Prometheus, native histograms on (protobuf), reads one target with every probe."""
    from tests.test_native_histograms import prometheus, query

    names = NAMES[:6]
    config = write(tmp_path / "probed.yaml", echo_config(echo.port, names))
    async with probed_run(config, "--workers", "2") as run:
        await run.wait_for(lambda: all_up(run, names), "every probe up")
        async with prometheus(tmp_path, run.url.removeprefix("http://")) as prom:

            async def scraped() -> bool:
                # Native samples: histogram_count is only defined on native histograms.
                native = await query(prom, "count(histogram_count(probe_message_rtt_seconds) > 0)")
                return native == len(names)

            await run.wait_for(scraped, "Prometheus to store every probe's native histogram")
            assert await query(prom, 'up{job="probed"}') == 1
            assert await query(prom, "count(probe_success == 1)") == len(names)
            assert await query(prom, "count(count by (probe) (probe_info))") == len(names)
            assert await query(prom, "count(probed_worker_up == 1)") == 2
            assert await query(prom, "count(process_cpu_seconds_total)") == 3
            lag = "count(count by (worker) (probed_event_loop_lag_seconds_count))"
            assert await query(prom, lag) == 2
