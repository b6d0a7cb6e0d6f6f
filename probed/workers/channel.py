"""What passes between the parent and its workers, over private channels only.

The config goes to a worker as a pickle of the validated model's fields: the parent read and
checked the file once, and every worker applies exactly what it checked (a worker reading the file
again could see a newer, unchecked version). A probe the worker already runs goes as its
fingerprint alone. Pickles are only read from the parent, over the worker's stdin or its unix
socket in a directory only this user can open.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Mapping
from typing import IO, Final

from probed.config import Config, ProbeConfig
from probed.reload_parse import Fingerprints, assemble, without_probes

_LENGTH: Final = struct.Struct(">I")
READY_LINE: Final = b"ready\n"
# The config travels to /-/apply with this content type.
CONFIG_TYPE: Final = "application/x-probed-config"


def dump_update(
    config: Config, prints: Fingerprints, unchanged: Mapping[str, ProbeConfig]
) -> bytes:
    """`config` for a worker that runs `unchanged`: the probes it already runs travel as their
    fingerprints alone, so an unchanged reload of 1,000 probes is a few dozen kilobytes that the
    worker reads on its loop, not 1,000 configs to unpickle (and compare) beside its sessions.
    """
    entries = [
        (p.name, prints[p.name][1], None if unchanged.get(p.name) is p else p)
        for p in config.probes
    ]
    return pickle.dumps((without_probes(config), entries), protocol=pickle.HIGHEST_PROTOCOL)


def load_update(data: bytes, known: Fingerprints) -> tuple[Config, Fingerprints]:
    """The config of an update, with the probes it left out taken from `known`; raises Stale."""
    fields, entries = pickle.loads(data)  # noqa: S301 - written by our parent, over a private channel
    return assemble(fields, entries, known)


def write_frame(stream: IO[bytes], data: bytes) -> None:
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> bytes:
    head = stream.read(_LENGTH.size)
    if len(head) != _LENGTH.size:
        raise EOFError("the parent closed the channel before sending the config")
    (length,) = _LENGTH.unpack(head)
    data = stream.read(length)
    if len(data) != length:
        raise EOFError("the config was cut short")
    return data


def frame(data: bytes) -> bytes:
    return _LENGTH.pack(len(data)) + data
