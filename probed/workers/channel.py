"""What passes between the parent and its workers, over private channels only.

The config goes to a worker as a pickle of the validated model's fields: the parent read and
checked the file once, and every worker applies exactly what it checked (a worker reading the file
again could see a newer, unchecked version). Pickles are only read from the parent, over the
worker's stdin or its unix socket in a directory only this user can open.
"""

from __future__ import annotations

import pickle
import struct
from typing import IO, Final

from probed.config import Config
from probed.config.schema.root import config_model

_LENGTH: Final = struct.Struct(">I")
READY_LINE: Final = b"ready\n"
# The config travels to /-/apply with this content type.
CONFIG_TYPE: Final = "application/x-probed-config"


def dump_config(config: Config) -> bytes:
    # The Config class is made at run time (the union of the probe kinds), so pickle its fields,
    # which are all module-level models, and build the class again on the other side.
    fields = {name: getattr(config, name) for name in type(config).model_fields}
    return pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)


def load_config_bytes(data: bytes) -> Config:
    fields = pickle.loads(data)  # noqa: S301 - written by our parent, over a private channel
    return config_model().model_construct(**fields)


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
