"""How many workers, and which worker runs which probe.

Probes are spread by the same rendezvous hashing as replicas (probed/sharding.py), with the
worker's index hashed apart from the replica's: a replica's probes are split again over its
workers, and a reload that adds or removes probes moves none of the others.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from probed.sharding import N, Shard, owners

_CGROUP_ROOT: Final = Path("/sys/fs/cgroup")

# A worker that is alive but does not answer (its loop stuck in a call that never returns, the
# process stopped) would keep probed_worker_up at 1 while its probes' series vanish from every
# scrape: one silent this long is killed and started again (`--workers.liveness-timeout`).
LIVENESS_TIMEOUT: Final = 30.0


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """This process's cgroup directories, its own first and then each parent up to the root."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    dirs: list[Path] = []
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: "0::/system.slice/probed.service"
            base = root
        elif "cpu" in controllers.split(","):  # cgroup v1: "4:cpu,cpuacct:/..."
            base = root / controllers
            if not base.is_dir():
                base = root / "cpu"
        else:
            continue
        here = base / path.lstrip("/")
        dirs += [here, *[p for p in here.parents if p.is_relative_to(base)]]
    return dirs


def cpu_quota(
    root: Path = _CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
) -> int | None:
    """Whole CPUs the tightest CPU quota over this process allows, rounded up; None: no quota.

    A Kubernetes CPU limit and systemd's CPUQuota= are such quotas (cgroup v2 `cpu.max`, v1
    `cpu.cfs_quota_us`), set on the process's own cgroup or on one above it.
    """
    found: list[int] = []
    for directory in _cgroup_dirs(root, proc_cgroup):
        try:
            if (directory / "cpu.max").exists():
                quota, period = (directory / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    found.append(math.ceil(int(quota) / int(period)))
            elif (directory / "cpu.cfs_quota_us").exists():
                quota = (directory / "cpu.cfs_quota_us").read_text().strip()
                period = (directory / "cpu.cfs_period_us").read_text().strip()
                if int(quota) > 0:
                    found.append(math.ceil(int(quota) / int(period)))
        except (OSError, ValueError, ZeroDivisionError):
            continue
    return max(1, min(found)) if found else None


def cores_available() -> int:
    """The CPUs this process may use: its affinity (cpusets, taskset), capped by a CPU quota.

    Not the host's count: a pod limited to 2 CPUs on a 64-core node gets 2 workers.
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        cores = max(1, os.cpu_count() or 1)
    quota = cpu_quota()
    return cores if quota is None else min(cores, quota)


def worker_count(requested: int | None, probes: int) -> int:
    """--workers N, or one per available core; never more workers than probes to share."""
    wanted = requested if requested is not None else cores_available()
    return max(1, min(wanted, probes))


def worker_of(name: str, count: int) -> int:
    # Salted apart from the replica hash: a replica owns the probes whose best replica shard is
    # its index, and hashing those again with the same key would put them all on one worker.
    return owners(f"worker\0{name}", count)[0]


@dataclass(frozen=True)
class WorkerShard(Shard):
    """Worker `index` of `count`, within the replica shard `within` (None: every probe)."""

    within: Shard | None = None

    def owns(self, key: str) -> bool:
        return (self.within is None or self.within.owns(key)) and worker_of(
            key, self.count
        ) == self.index

    def select(self, items: Iterable[N]) -> list[N]:
        return [item for item in items if self.owns(item.name)]

    def __str__(self) -> str:
        text = f"worker {self.index}/{self.count}"
        return text if self.within is None else f"shard {self.within}, {text}"
