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

_CPU_MAX: Final = Path("/sys/fs/cgroup/cpu.max")


def cpu_quota(cpu_max: Path = _CPU_MAX) -> int | None:
    """Whole CPUs the cgroup's quota allows (a Kubernetes CPU limit), rounded up; None: no limit."""
    try:
        quota, _, period = cpu_max.read_text().strip().partition(" ")
        if quota == "max":
            return None
        return max(1, math.ceil(int(quota) / int(period or "100000")))
    except (OSError, ValueError, ZeroDivisionError):
        return None


def cores_available(cpu_max: Path = _CPU_MAX) -> int:
    """The CPUs this process may use: its affinity (cpusets, taskset), capped by a CPU quota.

    Not the host's count: a pod limited to 2 CPUs on a 64-core node gets 2 workers.
    """
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        cores = max(1, os.cpu_count() or 1)
    quota = cpu_quota(cpu_max)
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
