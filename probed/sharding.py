"""Scale-out past one process: which probes this replica runs, by rendezvous hashing.

Every replica reads the same config and keeps the probes whose highest-scoring shards include its
own index. Rendezvous (highest random weight) hashing needs no coordination and no shared state,
and when the shard count grows from n to n+1 only the probes the new shard wins move (about
1/(n+1) of them); the rest stay where they are, sessions and all.

With a replication factor k each probe runs on its k best shards, so losing one replica does not
blind anyone: Prometheus (or Thanos/Mimir above it) sees the probe from the others.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

ENV_SHARD: Final = "PROBED_SHARD"
ENV_REPLICAS: Final = "PROBED_SHARD_REPLICAS"

# "2/5", or a StatefulSet pod name with its ordinal as in "probed-2/5": Kubernetes can put
# $(POD_NAME) into the arguments, but not the ordinal alone (before pod-index labels).
_SPEC_RE: Final = re.compile(r"^(?:.+-)?(?P<index>\d+)/(?P<count>\d+)$")


class Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=Named)


@dataclass(frozen=True)
class Shard:
    """Replica `index` of `count`; each probe runs on `replicas` of the `count` shards."""

    index: int
    count: int
    replicas: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("the shard count must be at least 1")
        if not 0 <= self.index < self.count:
            raise ValueError(f"the shard index must be between 0 and {self.count - 1}")
        if not 1 <= self.replicas <= self.count:
            raise ValueError(f"the replication factor must be between 1 and {self.count}")

    @classmethod
    def parse(cls, spec: str, replicas: int = 1) -> Shard:
        """Parse "i/n" (or "podname-i/n"); raises ValueError with an operator-facing reason."""
        match = _SPEC_RE.fullmatch(spec.strip())
        if match is None:
            raise ValueError(f"shard {spec!r} must look like INDEX/COUNT, e.g. 0/3 or probed-0/3")
        return cls(int(match["index"]), int(match["count"]), replicas)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Shard | None:
        spec = environ.get(ENV_SHARD, "").strip()
        if not spec:
            return None
        replicas_text = environ.get(ENV_REPLICAS, "1").strip() or "1"
        if not replicas_text.isdigit():
            raise ValueError(f"{ENV_REPLICAS} must be a whole number, got {replicas_text!r}")
        return cls.parse(spec, int(replicas_text))

    def owns(self, key: str) -> bool:
        return self.index in owners(key, self.count, self.replicas)

    def select(self, items: Iterable[N]) -> list[N]:
        """The items (probes, by name) this shard runs, in their original order."""
        return [item for item in items if self.owns(item.name)]

    def __str__(self) -> str:
        text = f"{self.index}/{self.count}"
        return text if self.replicas == 1 else f"{text} (replicas {self.replicas})"


def _score(key: str, shard: int) -> int:
    # A stable hash, unlike hash(): every replica, on every Python, must agree.
    digest = hashlib.blake2b(f"{shard}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owners(key: str, count: int, replicas: int = 1) -> Sequence[int]:
    """The shards that run `key`: the `replicas` highest scores among shards 0..count-1."""
    ranked = sorted(range(count), key=lambda shard: _score(key, shard), reverse=True)
    return ranked[:replicas]


def resolve(
    spec: str | None, replicas: int | None, environ: Mapping[str, str] = os.environ
) -> Shard | None:
    """The shard from the command line, else from the environment; None runs every probe.

    A flag wins over the environment as a whole: `--shard 1/4` with PROBED_SHARD_REPLICAS=2 in
    the environment still runs one copy unless `--shard-replicas` says otherwise.
    """
    if spec is None:
        shard = Shard.from_env(environ)
        if shard is not None and replicas is not None:
            shard = Shard(shard.index, shard.count, replicas)
        return shard
    return Shard.parse(spec, replicas or 1)
